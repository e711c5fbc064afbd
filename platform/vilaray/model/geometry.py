"""Image geometry a model dictates to the data pipeline: input resolution and image tokens per image."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vilaray.model.projectors import PROJECTORS


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
        return PROJECTORS.get(self.projector).num_tokens(self.grid)

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
