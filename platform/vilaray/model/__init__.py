"""VLM assembly: vision tower + projector registry + causal LM; freezing, LoRA and export."""
