"""Ray Train worker loop, DeepSpeed strategy, checkpoints and the three-stage runner."""
