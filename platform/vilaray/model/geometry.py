"""Image geometry a model dictates to the data pipeline: input resolution and image tokens per image."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vilaray.registry import Registry

# Image tokens per grid side, by projector. They live here, not on the torch modules, so the data side
# (tokenizer actors, recipe checks) sizes image placeholders without importing the model code.
# `model/projectors.py` takes each projector's count from this table and refuses a projector without one.
IMAGE_TOKENS: Registry[Callable[[int], int]] = Registry(
    "projector",
    {
        "linear": lambda grid: grid * grid,
        "mlp2x_gelu": lambda grid: grid * grid,
        # VILA's 2x2 token merge; odd grids are padded to even first (27x27 SigLIP -> 14x14 = 196).
        "downsample2x2": lambda grid: math.ceil(grid / 2) ** 2,
    },
)


@dataclass(frozen=True)
class ImageGeometry:
    image_size: int
    patch_size: int
    projector: str

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        return IMAGE_TOKENS.get(self.projector)(self.grid)

    @property
    def image_bytes(self) -> int:
        return self.image_size * self.image_size * 3


def read_geometry(model_dir: str | Path) -> ImageGeometry:
    """Geometry from a saved model directory (`config.json`, plus `vilaray.json` naming the projector)."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"model directory {model_dir} has no config.json")
    cfg = json.loads(cfg_path.read_text())
    vision = cfg.get("vision_config") or {}
    if "image_size" not in vision or "patch_size" not in vision:
        raise ValueError(f"{cfg_path}: vision_config needs image_size and patch_size")
    extra = model_dir / "vilaray.json"
    projector = (
        json.loads(extra.read_text()).get("projector", "mlp2x_gelu") if extra.is_file() else "mlp2x_gelu"
    )
    return ImageGeometry(int(vision["image_size"]), int(vision["patch_size"]), projector)
