"""Pixels for scenes: one drawer per shape kind, small PNG icons and the photo-like JPEG variant."""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from vilaray.registry import Registry
from vilaray.synth.scenes import Scene

RGB = tuple[int, int, int]
Drawer = Callable[[ImageDraw.ImageDraw, float, float, float, RGB], None]

PALETTE: dict[str, RGB] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 200),
    "yellow": (230, 190, 0),
    "purple": (140, 70, 190),
    "orange": (250, 130, 15),
}
# Centres as fractions of the side: large shapes stay inside the frame and at most touch a neighbour.
CENTERS: dict[str, tuple[float, float]] = {
    "top": (0.5, 0.2),
    "left": (0.2, 0.5),
    "center": (0.5, 0.5),
    "right": (0.8, 0.5),
    "bottom": (0.5, 0.8),
}
RADIUS: dict[str, float] = {"small": 0.075, "large": 0.13}
SCENE_KEY = "scene"  # PNG tEXt key / JPEG comment carrying the scene hash, so split leaks are checkable

DRAWERS: Registry[Drawer] = Registry("shape drawer")


def _regular(cx: float, cy: float, r: float, n: int, phase: float, inner: float | None = None) -> list:
    points = []
    steps = n * 2 if inner else n
    for i in range(steps):
        radius = r if inner is None or i % 2 == 0 else r * inner
        angle = phase + 2 * math.pi * i / steps
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


@DRAWERS.register("circle")
def _circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)


@DRAWERS.register("square")
def _square(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    half = r * 0.88  # similar area to the circle of the same size class
    draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)


@DRAWERS.register("triangle")
def _triangle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    draw.polygon(_regular(cx, cy + r * 0.15, r * 1.15, 3, -math.pi / 2), fill=fill)


@DRAWERS.register("star")
def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill: RGB) -> None:
    draw.polygon(_regular(cx, cy + r * 0.05, r * 1.15, 5, -math.pi / 2, inner=0.48), fill=fill)


def _jitter_color(color: RGB, rng: random.Random, amount: int) -> RGB:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in color)  # type: ignore[return-value]


def _draw_shapes(draw: ImageDraw.ImageDraw, scene: Scene, side: float, rng: random.Random) -> None:
    for shape in scene.ordered():
        fx, fy = CENTERS[shape.position]
        wobble = side * 0.025
        cx = fx * side + rng.uniform(-wobble, wobble)
        cy = fy * side + rng.uniform(-wobble, wobble)
        r = RADIUS[shape.size] * side * rng.uniform(0.93, 1.07)
        DRAWERS.get(shape.kind)(draw, cx, cy, r, _jitter_color(PALETTE[shape.color], rng, 12))


def render_icon(scene: Scene, size: int, rng: random.Random) -> bytes:
    """A flat `size`x`size` PNG on a plain light background; drawn at 2x and box-reduced for soft edges."""
    background = tuple(rng.randint(232, 250) for _ in range(3))
    image = Image.new("RGB", (size * 2, size * 2), background)
    _draw_shapes(ImageDraw.Draw(image), scene, size * 2, rng)
    info = PngInfo()
    info.add_text(SCENE_KEY, scene.hash())
    buf = io.BytesIO()
    image.reduce(2).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _photo_background(size: int, rng: random.Random, noise: np.random.Generator) -> Image.Image:
    start = np.array([rng.randint(170, 245) for _ in range(3)], dtype=np.float32)
    end = np.array([rng.randint(120, 235) for _ in range(3)], dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    # Built at 1/8 scale and upsampled once: a smooth gradient plus two octaves of mostly-grey blotches
    # reads as texture (paper, a wall) and costs one resize instead of three full-size passes.
    cells = max(8, size // 8)
    axis = np.linspace(-0.5, 0.5, cells, dtype=np.float32)
    t = np.clip(0.5 + axis[None, :] * math.cos(angle) + axis[:, None] * math.sin(angle), 0, 1)
    canvas = start + (end - start) * t[..., None]
    for octave, grey, tint in ((8, 9.0, 2.0), (cells, 5.0, 2.0)):
        blotches = noise.normal(0, grey, (octave, octave, 1)) + noise.normal(0, tint, (octave, octave, 3))
        layer = Image.fromarray(np.clip(blotches + 128, 0, 255).astype(np.uint8))
        canvas += np.asarray(layer.resize((cells, cells), Image.Resampling.BICUBIC), dtype=np.float32) - 128
    small = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def render_photo(scene: Scene, size: int, rng: random.Random, quality: int = 90) -> bytes:
    """A photo-like JPEG: gradient + textured background, anti-aliased shapes, film grain."""
    noise = np.random.default_rng(rng.getrandbits(64))
    image = _photo_background(size, rng, noise).convert("RGBA")
    layer = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
    _draw_shapes(ImageDraw.Draw(layer), scene, size * 2, rng)
    image.alpha_composite(layer.reduce(2))  # drawn at 2x and box-reduced: anti-aliased edges
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    pixels += noise.integers(-6, 7, pixels.shape, dtype=np.int16)  # film grain, over shapes too
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, comment=f"{SCENE_KEY}={scene.hash()}".encode())
    return buf.getvalue()


def scene_hash_of(image_bytes: bytes) -> str | None:
    """The scene hash an image of this world carries (PNG tEXt or JPEG comment), None for foreign images."""
    with Image.open(io.BytesIO(image_bytes)) as image:
        if image.format == "PNG":
            return image.text.get(SCENE_KEY)  # type: ignore[attr-defined]
        comment = image.info.get("comment", b"")
    prefix = f"{SCENE_KEY}=".encode()
    return comment[len(prefix) :].decode() if comment.startswith(prefix) else None
