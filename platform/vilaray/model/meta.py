"""The model a spec describes, from its configs alone: the meta-device dry run (shapes, parameter counts,
projector fit) and the image geometry the data pipeline must serve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vilaray.model.build import (
    FRESH_FEATURE_LAYER,
    check_projector_fits,
    fresh_projector,
    inline_config,
    saved_model_type,
    strip_projector_prefix,
    tower_class,
    vision_config_of,
    weights_file,
)
from vilaray.model.geometry import ImageGeometry
from vilaray.model.projectors import Projector
from vilaray.model.spec import ComponentSource, ModelSpec
from vilaray.model.vlm import VisionLanguageModel


@dataclass(frozen=True)
class MetaReport:
    """What the full-size model would be, computed without allocating it."""

    params: dict[str, int]
    vision_hidden: int
    text_hidden: int
    projector: str
    geometry: ImageGeometry

    @property
    def total(self) -> int:
        return sum(self.params.values())

    def table(self) -> str:
        lines = [f"{name:<16}{n:>16,}" for name, n in self.params.items()]
        lines.append(f"{'total':<16}{self.total:>16,}")
        lines.append(
            f"projector {self.projector}: {self.vision_hidden} -> {self.text_hidden}; image {self.geometry.image_size}px "
            f"/ patch {self.geometry.patch_size} -> {self.geometry.tokens_per_image} tokens per image"
        )
        return "\n".join(lines)


def spec_configs(spec: ModelSpec) -> tuple[Any, Any, str, int]:
    """(vision config, text config, projector name, feature layer) from a spec, reading configs only."""
    from transformers import AutoConfig

    if spec.path is not None:
        model_type = saved_model_type(spec.path)
        if model_type == "vilaray_vlm":
            import vilaray.model.hf  # noqa: F401
        cfg = AutoConfig.from_pretrained(spec.path)
        saved = "mlp2x_gelu" if model_type == "llava" else cfg.projector
        layer = cfg.vision_feature_layer if spec.vision_feature_layer is None else spec.vision_feature_layer
        return cfg.vision_config, cfg.text_config, spec.projector or saved, layer

    def load(source: ComponentSource):
        return (
            inline_config(source.config)
            if source.config is not None
            else AutoConfig.from_pretrained(source.path)
        )

    layer = FRESH_FEATURE_LAYER if spec.vision_feature_layer is None else spec.vision_feature_layer
    return vision_config_of(load(spec.vision)), load(spec.llm), spec.projector, layer


def spec_geometry(spec: ModelSpec) -> ImageGeometry:
    """The image geometry the data pipeline must serve for this spec (configs only, no weights)."""
    vc, _, projector, _ = spec_configs(spec)
    return ImageGeometry(int(vc.image_size), int(vc.patch_size), projector)


def build_on_meta(spec: ModelSpec) -> tuple[VisionLanguageModel, MetaReport]:
    """The full-size VLM on the meta device (no memory, no download beyond configs) and its parameter
    counts per component. Fails on a projector (or projector checkpoint) that does not fit the tower's
    and LLM's widths, naming both."""
    from transformers import AutoModelForCausalLM

    vc, tc, projector_name, layer = spec_configs(spec)
    with torch.device("meta"):
        tower = tower_class(vc)._from_config(vc)
        lm = AutoModelForCausalLM.from_config(tc)
        projector = fresh_projector(projector_name, vc.hidden_size, tc.hidden_size)
    if spec.projector_weights:
        _check_checkpoint_shapes(projector, spec.projector_weights, vc.hidden_size, tc.hidden_size)
    check_projector_fits(projector, vc.hidden_size, tc.hidden_size, spec.path or "model")
    model = VisionLanguageModel(
        tower, projector, lm, image_token_id=-1, feature_layer=layer, image_processor=None
    )
    params = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in ("vision_tower", "projector", "language_model")
    }
    report = MetaReport(params, vc.hidden_size, tc.hidden_size, projector_name, model.geometry)
    return model, report


def _check_checkpoint_shapes(projector: Projector, path: str, vision_hidden: int, text_hidden: int) -> None:
    """Shapes from the safetensors header only: a dry run never reads the tensors."""
    from safetensors import safe_open

    with safe_open(weights_file(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    shapes = strip_projector_prefix(shapes)
    for key, want in projector.state_dict().items():
        got = shapes.get(key)
        if got is None:
            raise ValueError(f"projector weights {path}: no tensor {key} for projector {projector.name}")
        if got != tuple(want.shape):
            raise ValueError(
                f"projector weights {path}: {key} has shape {list(got)} but the vision tower's hidden size "
                f"{vision_hidden} and the LM's hidden size {text_hidden} need {list(want.shape)}"
            )
