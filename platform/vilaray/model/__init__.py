"""VLM assembly: vision tower + projector registry + causal LM; freezing, LoRA and export."""

from vilaray.model.hf import register as _register_hf_classes

# Exports with a non-LLaVA projector load through AutoModelForImageTextToText once vilaray is imported.
_register_hf_classes()
