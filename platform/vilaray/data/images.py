"""Image decoding for training: refuse decompression bombs, decode, resize to the tower's square, keep uint8."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageRejected(ValueError):
    """An image that cannot be used; `reason` is the quarantine counter it goes to."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def decode_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Encoded bytes -> uint8 [size, size, 3] (RGB), resized the way SigLIP's processor resizes (bicubic, no crop).

    The pixel count is checked from the header before any pixel is decoded, so a decompression bomb costs
    nothing. Normalisation is left to the GPU.
    """
    if not data:
        raise ImageRejected("corrupt_image", "empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageRejected("image_too_large", f"{w}x{h} exceeds {max_pixels} pixels")
            if w < 1 or h < 1:
                raise ImageRejected("corrupt_image", f"degenerate size {w}x{h}")
            # JPEG can decode at 1/2, 1/4, 1/8 scale directly: far cheaper for web-sized photos.
            img.draft("RGB", (size, size))
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("image_too_large", str(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageRejected("corrupt_image", f"{type(e).__name__}: {e}") from None
