"""VLM assembly: vision tower + projector registry + causal LM; freezing, LoRA and export.

Importing the package loads nothing heavy: the data pipeline's workers read `model.spec` and `model.geometry`
only. Exports with a non-LLaVA projector load through `AutoModelForImageTextToText` once `vilaray.model.hf`
is imported (it registers the `vilaray_vlm` classes; loading and exporting through vilaray do so themselves).
"""
