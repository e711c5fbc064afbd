"""Export the training VLM in transformers format (LLaVA where it fits, else vilaray's registered class)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vilaray.model.hf import VilarayVLMConfig, VilarayVLMForConditionalGeneration
from vilaray.model.lora import merged_state_dict
from vilaray.model.vlm import VisionLanguageModel, prefix_tokens

log = logging.getLogger(__name__)

# Tokens a tower puts before its patches -> LLaVA's vision_feature_select_strategy ("default" drops CLS).
SELECT_STRATEGY = {0: "full", 1: "default"}
# LM config fields that change logits after lm_head inside `*ForCausalLM.forward`; LLaVA applies its own
# bare lm_head, so such LMs cannot be exported as LLaVA.
HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


@dataclass(frozen=True)
class ExportFormat:
    name: str
    # None if the model can be written in this format, else why not.
    unsupported: Callable[[VisionLanguageModel], str | None]
    build: Callable[[VisionLanguageModel, dict[str, torch.Tensor]], nn.Module]
    # kwargs for LlavaProcessor that make it expand `<image>` to the model's token count.
    processor_tokens: Callable[[VisionLanguageModel], dict[str, Any]]


def _lm_parts(lm: nn.Module) -> tuple[str, nn.Module]:
    return lm.base_model_prefix, getattr(lm, lm.base_model_prefix)


def _llava_unsupported(model: VisionLanguageModel) -> str | None:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    if model.projector_name != "mlp2x_gelu":
        return f"projector {model.projector_name} (LLaVA has mlp2x_gelu only)"
    if prefix_tokens(model.vision_tower, model.grid) not in SELECT_STRATEGY:
        return "the tower emits more than one non-patch token"
    lm = model.language_model
    prefix, base = _lm_parts(lm)
    children = {n for n, _ in lm.named_children()}
    head = lm.get_output_embeddings()
    if children != {prefix, "lm_head"} or not isinstance(head, nn.Linear) or head.bias is not None:
        return f"{type(lm).__name__} is not a base model + bias-free lm_head"
    extras = [k for k in HEAD_EXTRAS if getattr(lm.config, k, None) not in (None, 1.0)]
    if extras:
        return f"{type(lm).__name__} post-processes its logits ({extras})"
    if MODEL_MAPPING.get(type(lm.config), None) is not type(base):
        return f"AutoModel does not build {type(base).__name__} from its config"
    if MODEL_MAPPING.get(type(model.vision_tower.config), None) is not type(model.vision_tower):
        return f"AutoModel does not build {type(model.vision_tower).__name__} from its config"
    return None


def _assign(target: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load `state` into a meta-built target by reference (no copy), then re-tie shared weights."""
    missing, unexpected = target.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(target, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(
            f"export to {type(target).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    target.tie_weights()
    return target


def _dtype(model: VisionLanguageModel) -> torch.dtype:
    return next(model.language_model.parameters()).dtype


def _build_llava(model: VisionLanguageModel, state: dict[str, torch.Tensor]) -> nn.Module:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    lm = model.language_model
    prefix, _ = _lm_parts(lm)
    renames = (
        ("vision_tower.", "model.vision_tower."),
        ("projector.", "model.multi_modal_projector."),
        (f"language_model.{prefix}.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
    )
    renamed = {}
    for key, value in state.items():
        new = next((dst + key[len(src) :] for src, dst in renames if key.startswith(src)), None)
        if new is None:
            raise RuntimeError(f"export to LLaVA: no place for {key}")
        renamed[new] = value
    strategy = SELECT_STRATEGY[prefix_tokens(model.vision_tower, model.grid)]
    config = LlavaConfig(
        vision_config=model.vision_tower.config.to_dict(),
        text_config=lm.config.to_dict(),
        image_token_id=model.image_token_id,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=model.feature_layer,
        image_seq_length=model.tokens_per_image,
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)),
    )
    with torch.device("meta"):
        target = LlavaForConditionalGeneration(config)
    return _assign(target, renamed)


def _llava_processor_tokens(model: VisionLanguageModel) -> dict[str, Any]:
    extra = prefix_tokens(model.vision_tower, model.grid)
    # llava-hf's convention: count the CLS in, then "default" removes it again.
    return {
        "patch_size": model.patch_size,
        "vision_feature_select_strategy": SELECT_STRATEGY[extra],
        "num_additional_image_tokens": extra,
    }


def _build_vilaray(model: VisionLanguageModel, state: dict[str, torch.Tensor]) -> nn.Module:
    config = VilarayVLMConfig(
        vision_config=model.vision_tower.config.to_dict(),
        text_config=model.language_model.config.to_dict(),
        projector=model.projector_name,
        image_token_id=model.image_token_id,
        vision_feature_layer=model.feature_layer,
        image_seq_length=model.tokens_per_image,
    )
    with torch.device("meta"):
        target = VilarayVLMForConditionalGeneration(config)
    return _assign(target, state)


def _vilaray_processor_tokens(model: VisionLanguageModel) -> dict[str, Any]:
    # LlavaProcessor counts (size // patch_size)^2 + num_additional_image_tokens placeholders. Pick the
    # "patch" so that this is the projector's count (a 2x2 merge = a patch twice as wide); an odd grid
    # that no integer patch reproduces is made up by the additive term.
    tokens, size = model.tokens_per_image, model.image_size
    side = math.isqrt(tokens)
    patch = max(size // side, 1)
    return {
        "patch_size": patch,
        "vision_feature_select_strategy": "full",
        "num_additional_image_tokens": tokens - (size // patch) ** 2,
    }


def _never(model: VisionLanguageModel) -> str | None:
    return None


# Tried in order: the first format that takes the model is written.
FORMATS: list[ExportFormat] = [
    ExportFormat("llava", _llava_unsupported, _build_llava, _llava_processor_tokens),
    ExportFormat("vilaray_vlm", _never, _build_vilaray, _vilaray_processor_tokens),
]


def choose_format(model: VisionLanguageModel) -> ExportFormat:
    for fmt in FORMATS:
        reason = fmt.unsupported(model)
        if reason is None:
            return fmt
        log.info("export: not %s: %s", fmt.name, reason)
    raise RuntimeError("no export format accepts this model")


def build_processor(
    model: VisionLanguageModel, tokenizer, fmt: ExportFormat, processor_kwargs: dict | None = None
):
    """LlavaProcessor = the tower's image processor (resizing to its input size) + the tokenizer + the
    chat template, expanding each `<image>` to the model's tokens per image."""
    from transformers import LlavaProcessor

    kwargs = dict(processor_kwargs or {})
    chat_template = kwargs.pop("chat_template", None) or getattr(tokenizer, "chat_template", None)
    ip = model.image_processor
    settings = ip.to_dict() | {"size": {"height": model.image_size, "width": model.image_size}} | kwargs
    settings.pop("image_processor_type", None)
    if "crop_size" in settings:
        settings["crop_size"] = {"height": model.image_size, "width": model.image_size}
    image_processor = type(ip)(**settings)
    image_token = tokenizer.convert_ids_to_tokens(model.image_token_id)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chat_template,
        image_token=image_token,
        **fmt.processor_tokens(model),
    )


@torch.no_grad()
def export(
    model: VisionLanguageModel, tokenizer, out_dir: str | Path, processor_kwargs: dict | None = None
) -> Path:
    """Write `out_dir` so that `AutoModelForImageTextToText.from_pretrained(out_dir)` and
    `AutoProcessor.from_pretrained(out_dir)` load it: LoRA merged, weights in the parameters' dtype,
    plus `vilaray.json` (projector name, for `read_geometry`). `processor_kwargs` override the image
    processor's settings; a `chat_template` key replaces the tokenizer's template.

    Under ZeRO-3 call it with the parameters gathered (e.g. inside `deepspeed.zero.GatheredParameters`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = choose_format(model)
    target = fmt.build(model, merged_state_dict(model))
    dtype = _dtype(model)
    target.config.dtype = dtype
    gen = getattr(model.language_model, "generation_config", None)
    if gen is not None:
        target.generation_config = gen
    target.save_pretrained(str(out_dir))
    build_processor(model, tokenizer, fmt, processor_kwargs).save_pretrained(str(out_dir))
    meta = {
        "projector": model.projector_name,
        "format": fmt.name,
        "vision_feature_layer": model.feature_layer,
        "tokens_per_image": model.tokens_per_image,
        "dtype": str(dtype).removeprefix("torch."),
    }
    (out_dir / "vilaray.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("exported %s (%s, %s) to %s", fmt.name, model.projector_name, meta["dtype"], out_dir)
    return out_dir
