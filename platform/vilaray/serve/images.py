"""Images in requests: `data:` URLs only, with caps on bytes and (from the header, before decoding) pixels."""

from __future__ import annotations

import io

from PIL import Image

from vilaray.data.readers.images import decode_data_url
from vilaray.data.readers.records import BadRecord
from vilaray.serve.config import Limits
from vilaray.serve.errors import APIError


def image_bytes(ref: object, limits: Limits) -> bytes:
    """One `image_url.url` -> its bytes, checked to be a whole image within the limits."""
    if not isinstance(ref, str):
        raise APIError(400, "image_url.url must be a string", "image_url")
    if not ref.startswith("data:"):
        scheme = ref.split(":", 1)[0] if ":" in ref else "a path"
        raise APIError(
            400, f"image_url must be a data: URL ({scheme} URLs are not fetched by this server)", "image_url"
        )
    # A base64 payload is 4/3 of its bytes: refuse an oversized one before decoding it.
    if len(ref) * 3 // 4 > limits.max_image_bytes + 1024:
        raise APIError(413, f"image is over max_image_bytes {limits.max_image_bytes}", "image_url")
    try:
        data = decode_data_url(ref)
    except BadRecord as err:
        raise APIError(400, f"image_url: {err}", "image_url") from None
    if len(data) > limits.max_image_bytes:
        raise APIError(
            413, f"image is {len(data)} bytes, over max_image_bytes {limits.max_image_bytes}", "image_url"
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > limits.max_image_pixels:
                raise APIError(
                    400,
                    f"image is {w}x{h} pixels, over max_image_pixels {limits.max_image_pixels}",
                    "image_url",
                )
            img.load()  # truncated or corrupt data fails here, not inside the model call
    except APIError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise APIError(400, f"image_url does not hold a readable image ({err})", "image_url") from None
    return data
