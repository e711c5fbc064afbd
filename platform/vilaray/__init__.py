"""vilaray: train VILA-style visual language models on Ray (Data, Train + DeepSpeed, Tune, Serve)."""

__version__ = "0.1.0"
