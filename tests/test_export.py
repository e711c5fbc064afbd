"""Export: LoRA merged, transformers format (LLaVA for mlp2x_gelu, vilaray's registered class otherwise),
processor expanding `<image>` to the projector's count, and the same logits after loading it back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_model import make_batch, without_labels
from vilaray.model.build import load_vlm
from vilaray.model.export import export
from vilaray.model.freeze import apply_schedule
from vilaray.model.geometry import read_geometry
from vilaray.model.spec import ComponentSchedule, FreezeSchedule

LORA_LLM = FreezeSchedule(language_model=ComponentSchedule(mode="lora", r=4, alpha=8))


def trained_like(model) -> None:
    """Non-zero LoRA B matrices (peft starts them at 0) so that merging has something to merge."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize(
    ("projector", "hf_class", "tokens"),
    [
        (None, "LlavaForConditionalGeneration", 64),
        ("downsample2x2", "VilarayVLMForConditionalGeneration", 16),
    ],
)
def test_export_loads_with_auto_class_and_gives_the_same_logits(
    assets_dir, tokenizer, tmp_path, projector, hf_class, tokens
):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, tok = load_vlm(assets_dir, projector=projector)
    apply_schedule(model, LORA_LLM)
    trained_like(model)
    model.eval()
    out = export(model, tok, tmp_path / "export")

    assert json.loads((out / "vilaray.json").read_text())["projector"] == model.projector_name
    assert read_geometry(out).tokens_per_image == tokens == model.tokens_per_image
    loaded = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(loaded).__name__ == hf_class
    assert not any("lora" in k for k in loaded.state_dict())

    batch = without_labels(make_batch(model, tok, images_per_row=(1, 2)))
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = loaded(
            input_ids=batch["input_ids"],
            pixel_values=model.to_model_pixels(batch["pixel_values"]),
            position_ids=batch["position_ids"],
            use_cache=False,
        ).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    # The saved processor expands <image> to the projector's count and normalises like the training path.
    processor = AutoProcessor.from_pretrained(str(out))
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    enc = processor(images=[Image.fromarray(image)], text=[prompt], return_tensors="pt")
    assert int((enc["input_ids"] == model.image_token_id).sum()) == tokens
    torch.testing.assert_close(
        enc["pixel_values"], model.to_model_pixels(torch.from_numpy(image)[None]), atol=1e-6, rtol=0
    )
    generated = loaded.generate(**enc, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == enc["input_ids"].shape[1] + 3

    # The next stage starts from this export: same logits through vilaray's own loader.
    again, _ = load_vlm(out)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(**batch).logits, ours, atol=1e-4, rtol=1e-4)


def test_export_keeps_parameter_dtype(assets_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    model, tok = load_vlm(assets_dir, dtype=torch.bfloat16)
    out = export(model, tok, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForImageTextToText.from_pretrained(str(out)).dtype == torch.bfloat16
