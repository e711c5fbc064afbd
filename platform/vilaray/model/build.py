"""Build the training VLM from a ModelSpec: a saved VLM directory, or a tower + LLM + fresh projector."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from vilaray.model.packed_attention import PACKED_SDPA
from vilaray.model.projectors import PROJECTORS, Projector
from vilaray.model.spec import ComponentSource, ModelSpec
from vilaray.model.vlm import VisionLanguageModel
from vilaray.registry import Registry

log = logging.getLogger(__name__)

# What a fresh build feeds the projector when the spec does not say: LLaVA-1.5's and VILA's choice.
FRESH_FEATURE_LAYER = -2

# Image processors for towers whose path has no preprocessor_config.json (or inline configs):
# class name in transformers, and its normalisation.
IMAGE_PROCESSORS: dict[str, tuple[str, list[float], list[float]]] = {
    "siglip_vision_model": ("SiglipImageProcessor", [0.5] * 3, [0.5] * 3),
    "clip_vision_model": (
        "CLIPImageProcessor",
        [0.48145466, 0.4578275, 0.40821073],
        [0.26862954, 0.26130258, 0.27577711],
    ),
}


class BuiltVLM(NamedTuple):
    model: VisionLanguageModel
    tokenizer: Any


def _from_pretrained_kwargs(dtype: torch.dtype, attn: str | None) -> dict:
    return {"dtype": dtype} | ({"attn_implementation": attn} if attn else {})


def default_image_processor(vision_config, **overrides):
    """The tower family's processor, resizing straight to the tower's square input size."""
    import transformers

    try:
        cls_name, mean, std = IMAGE_PROCESSORS[vision_config.model_type]
    except KeyError:
        raise ValueError(
            f"no default image processor for tower type {vision_config.model_type!r} (known: "
            f"{sorted(IMAGE_PROCESSORS)}); give a vision path holding a preprocessor_config.json"
        ) from None
    size = vision_config.image_size
    kwargs = {
        "size": {"height": size, "width": size},
        "do_center_crop": False,
        "image_mean": mean,
        "image_std": std,
    } | overrides
    return getattr(transformers, cls_name)(**kwargs)


def _saved_image_processor_settings(path: str) -> dict | None:
    """The image processor's settings saved with `path` (local dir or hub id), if any."""
    from transformers.utils import cached_file

    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        try:
            found = cached_file(path, name, _raise_exceptions_for_missing_entries=False)
        except OSError:
            found = None
        if found:
            settings = json.loads(Path(found).read_text())
            settings = settings.get(key) if key else settings
            if settings and "image_processor_type" in settings:
                return settings
    return None


def load_image_processor(path: str | None, vision_config):
    """The processor saved with `path` (a VLM dir, a tower checkpoint or hub id), else the family default.

    Read from its JSON rather than through AutoImageProcessor, which on transformers 5.17 demands
    torchvision even where the PIL backend would do.
    """
    import transformers

    settings = _saved_image_processor_settings(path) if path is not None else None
    if settings is None:
        return default_image_processor(vision_config)
    settings = dict(settings)
    name = settings.pop("image_processor_type")
    cls = getattr(transformers, name, None) or getattr(transformers, name.removesuffix("Fast"))
    return cls(**settings)


def load_tokenizer(path: str, image_token: str = "<image>"):
    """The tokenizer at `path`, with `image_token` added as a special token if it lacks one."""
    from transformers import AddedToken, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    declared = getattr(tokenizer, "image_token", None)
    if declared is not None and declared != image_token:
        # LlavaProcessor expands the tokenizer's own image_token, whatever it is told: the two must agree.
        raise ValueError(f"tokenizer {path} declares image_token {declared!r}; set model.image_token to it")
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
        log.info("added %s to the tokenizer from %s (id %d)", image_token, path, len(tokenizer) - 1)
    return tokenizer


def image_token_id(tokenizer, image_token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {image_token!r} token")
    return int(token_id)


def vision_config_of(config):
    """A dual-encoder config (CLIP, SigLIP) holds the tower's config as `vision_config`."""
    return getattr(config, "vision_config", None) or config


def tower_class(vision_config):
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    return MODEL_MAPPING[type(vision_config)]


def inline_config(config: dict[str, Any]):
    from transformers import AutoConfig

    values = dict(config)
    return AutoConfig.for_model(values.pop("model_type"), **values)


def load_tower(source: ComponentSource, dtype: torch.dtype, attn: str | None = None) -> nn.Module:
    """A vision tower alone: from a tower checkpoint, the vision half of a CLIP/SigLIP checkpoint, or an
    inline config (random init)."""
    from transformers import AutoConfig

    if source.config is not None:
        vc = vision_config_of(inline_config(source.config))
        return tower_class(vc)._from_config(vc, **_from_pretrained_kwargs(dtype, attn))
    vc = vision_config_of(AutoConfig.from_pretrained(source.path))
    return tower_class(vc).from_pretrained(source.path, config=vc, **_from_pretrained_kwargs(dtype, attn))


def load_llm(source: ComponentSource, dtype: torch.dtype, attn: str | None = None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    if source.config is not None:
        return AutoModelForCausalLM.from_config(
            inline_config(source.config), **_from_pretrained_kwargs(dtype, attn)
        )
    return AutoModelForCausalLM.from_pretrained(source.path, **_from_pretrained_kwargs(dtype, attn))


def causal_lm_around(base: nn.Module, lm_head: nn.Module, text_config) -> nn.Module:
    """A `*ForCausalLM` whose base model and head are the given (already loaded) modules: built on the meta
    device so nothing is allocated or initialised twice."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(text_config)
    setattr(lm, lm.base_model_prefix, base)
    lm.set_output_embeddings(lm_head)
    left = [n for n, t in [*lm.named_parameters(), *lm.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{type(lm).__name__} has parts beyond its base model and lm_head: {left[:5]}")
    return lm


def fresh_projector(name: str, vision_hidden: int, text_hidden: int) -> Projector:
    return PROJECTORS.get(name)(vision_hidden, text_hidden)


@dataclass
class Parts:
    """What a saved-directory loader hands back."""

    vision_tower: nn.Module
    projector: Projector
    language_model: nn.Module
    image_token_id: int
    feature_layer: int


def _from_llava(path: str, dtype: torch.dtype, attn: str | None) -> Parts:
    from transformers import AutoModelForImageTextToText

    llava = AutoModelForImageTextToText.from_pretrained(path, **_from_pretrained_kwargs(dtype, attn))
    cfg = llava.config
    if not isinstance(cfg.vision_feature_layer, int):
        raise ValueError(
            f"{path}: vision_feature_layer {cfg.vision_feature_layer} (several layers) is not supported"
        )
    if cfg.projector_hidden_act != "gelu" or not cfg.multimodal_projector_bias:
        raise ValueError(f"{path}: only LLaVA's gelu projector with biases maps to mlp2x_gelu")
    inner = llava.model
    # Adopt LLaVA's loaded linears into a (meta-built, so never allocated) registry projector.
    with torch.device("meta"):
        projector = fresh_projector("mlp2x_gelu", cfg.vision_config.hidden_size, cfg.text_config.hidden_size)
    projector.linear_1, projector.linear_2 = (
        inner.multi_modal_projector.linear_1,
        inner.multi_modal_projector.linear_2,
    )
    lm = causal_lm_around(inner.language_model, llava.lm_head, cfg.text_config)
    lm.generation_config = llava.generation_config  # eos ids etc. travel on to the next export
    return Parts(inner.vision_tower, projector, lm, cfg.image_token_id, cfg.vision_feature_layer)


def _from_vilaray(path: str, dtype: torch.dtype, attn: str | None) -> Parts:
    from transformers import AutoModelForImageTextToText

    import vilaray.model.hf  # noqa: F401  (registers the vilaray_vlm classes)

    hf = AutoModelForImageTextToText.from_pretrained(path, **_from_pretrained_kwargs(dtype, attn))
    cfg = hf.config
    hf.language_model.generation_config = hf.generation_config
    return Parts(
        hf.vision_tower, hf.projector, hf.language_model, cfg.image_token_id, cfg.vision_feature_layer
    )


# config.json model_type -> loader of a saved VLM directory.
SAVED_FORMATS: Registry[Callable[[str, torch.dtype, str | None], Parts]] = Registry(
    "saved model type", {"llava": _from_llava, "vilaray_vlm": _from_vilaray}
)


def saved_model_type(path: str | Path) -> str:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"model directory {path} has no config.json")
    model_type = json.loads(cfg.read_text()).get("model_type")
    if model_type not in SAVED_FORMATS:
        raise ValueError(
            f"{cfg}: model_type {model_type!r} is not a VLM vilaray loads ({SAVED_FORMATS.names()})"
        )
    return model_type


def check_projector_fits(projector: nn.Module, vision_hidden: int, text_hidden: int, where: str) -> None:
    """The projector's first layer must read the tower's width (x4 for 2x2 merging) and its last layer
    write the LM's width."""
    linears = [m for m in projector.modules() if isinstance(m, nn.Linear)]
    need_in = vision_hidden * projector.in_multiple
    got_in, got_out = linears[0].in_features, linears[-1].out_features
    if (got_in, got_out) != (need_in, text_hidden):
        raise ValueError(
            f"{where}: projector {projector.name} maps {got_in} -> {got_out}, but the vision tower's hidden "
            f"size is {vision_hidden} (projector input {need_in}) and the LM's hidden size is {text_hidden}"
        )


def _load_projector_weights(projector: Projector, path: str) -> None:
    from safetensors.torch import load_file

    state = strip_projector_prefix(load_file(weights_file(path)))
    expected = projector.state_dict()
    for key, tensor in state.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"projector weights {path}: {key} has shape {list(tensor.shape)} but this tower/LM pair needs "
                f"{list(expected[key].shape)}"
            )
    projector.load_state_dict(state)


PROJECTOR_PREFIXES = (
    "model.multi_modal_projector.",
    "multi_modal_projector.",
    "projector.",
)


def strip_projector_prefix(state: dict) -> dict:
    """Projector-only checkpoints come with the key prefix of whatever model saved them."""
    for prefix in PROJECTOR_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def weights_file(path: str) -> str:
    p = Path(path)
    return str(p / "model.safetensors") if p.is_dir() else str(p)


def _parts_from_dir(spec: ModelSpec, dtype: torch.dtype) -> tuple[Parts, Any, Any]:
    parts = SAVED_FORMATS.get(saved_model_type(spec.path))(spec.path, dtype, spec.attn_implementation)
    tokenizer = load_tokenizer(spec.tokenizer_dir, spec.image_token)
    if image_token_id(tokenizer, spec.image_token) != parts.image_token_id:
        raise ValueError(
            f"{spec.path}: the model's image token id {parts.image_token_id} is not the tokenizer's "
            f"{spec.image_token} ({image_token_id(tokenizer, spec.image_token)})"
        )
    if spec.projector is not None and spec.projector != parts.projector.name:
        log.info(
            "%s: replacing its %s projector with a fresh %s", spec.path, parts.projector.name, spec.projector
        )
        parts.projector = fresh_projector(
            spec.projector, parts.vision_tower.config.hidden_size, parts.language_model.config.hidden_size
        ).to(dtype)
    if spec.vision_feature_layer is not None:
        parts.feature_layer = spec.vision_feature_layer
    return parts, tokenizer, load_image_processor(spec.path, parts.vision_tower.config)


def _parts_from_components(spec: ModelSpec, dtype: torch.dtype) -> tuple[Parts, Any, Any]:
    tower = load_tower(spec.vision, dtype, spec.attn_implementation)
    lm = load_llm(spec.llm, dtype, spec.attn_implementation)
    tokenizer = load_tokenizer(spec.tokenizer_dir, spec.image_token)
    if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tokenizer))
    projector = fresh_projector(spec.projector, tower.config.hidden_size, lm.config.hidden_size).to(dtype)
    layer = FRESH_FEATURE_LAYER if spec.vision_feature_layer is None else spec.vision_feature_layer
    parts = Parts(tower, projector, lm, image_token_id(tokenizer, spec.image_token), layer)
    return parts, tokenizer, load_image_processor(spec.vision.path, tower.config)


def build_model(spec: ModelSpec, dtype: torch.dtype = torch.float32) -> BuiltVLM:
    """The training VLM and its tokenizer (which holds the image placeholder token)."""
    parts, tokenizer, processor = (_parts_from_dir if spec.path else _parts_from_components)(spec, dtype)
    if spec.projector_weights:
        _load_projector_weights(parts.projector, spec.projector_weights)
    tower, lm = parts.vision_tower, parts.language_model
    if spec.attn_implementation is None:
        lm.set_attn_implementation(PACKED_SDPA)
    check_projector_fits(
        parts.projector, tower.config.hidden_size, lm.config.hidden_size, spec.path or "model"
    )
    model = VisionLanguageModel(
        tower,
        parts.projector,
        lm,
        image_token_id=parts.image_token_id,
        feature_layer=parts.feature_layer,
        image_processor=processor,
    )
    return BuiltVLM(model, tokenizer)


def load_vlm(path: str | Path, dtype: torch.dtype = torch.float32, **spec: Any) -> BuiltVLM:
    """Shorthand: `build_model(ModelSpec(path=...))`."""
    return build_model(ModelSpec(path=str(path), **spec), dtype)
