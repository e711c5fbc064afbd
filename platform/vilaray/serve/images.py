"""Images in requests: `data:` URLs, or http(s) URLs from listed hosts, with caps on bytes and (from the header,
before decoding) pixels."""

from __future__ import annotations

import io
import time
from urllib.parse import urlsplit

from PIL import Image

from vilaray.data.readers.images import decode_data_url
from vilaray.data.readers.records import BadRecord
from vilaray.serve.config import ImageFetch, Limits
from vilaray.serve.errors import APIError


def template_request(
    raw: list[dict], limits: Limits, fetch: ImageFetch | None = None
) -> tuple[list[dict], list[bytes]]:
    """A request's messages (as dicts) -> the chat template's messages and their images' bytes, parsed as the
    `messages_jsonl` training reader parses them; a malformed message is a 400."""
    from vilaray.data.readers.messages import parse_messages
    from vilaray.data.tokenize import template_messages

    try:
        canonical = parse_messages({"messages": raw}, lambda ref: image_bytes(ref, limits, fetch))
    except BadRecord as err:
        raise APIError(400, f"messages: {err}", "messages") from None
    return template_messages(canonical)


def image_bytes(ref: object, limits: Limits, fetch: ImageFetch | None = None) -> bytes:
    """One `image_url.url` -> its bytes, checked to be a whole image within the limits."""
    if not isinstance(ref, str):
        raise APIError(400, "image_url.url must be a string", "image_url")
    if ref.startswith("data:"):
        data = _from_data_url(ref, limits)
    elif ref.startswith(("http://", "https://")):
        data = _fetched(ref, limits, fetch or ImageFetch())
    else:
        scheme = ref.split(":", 1)[0] if ":" in ref else "a path"
        raise APIError(400, f"image_url must be a data: or http(s) URL, not {scheme}", "image_url")
    return _checked_image(data, limits)


def _from_data_url(ref: str, limits: Limits) -> bytes:
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
    return data


def _fetched(url: str, limits: Limits, fetch: ImageFetch) -> bytes:
    """GET from a listed host only: no redirects (they could lead anywhere), no credentials in the URL,
    the byte cap counted while reading, and one deadline for the whole download (a slow drip included)."""
    import httpx

    parts = urlsplit(url)
    if parts.username or parts.password:
        raise APIError(400, "image_url must not carry credentials", "image_url")
    host = (parts.hostname or "").lower()
    hosts = {h.lower() for h in fetch.allow_hosts}
    if host not in hosts and parts.netloc.lower() not in hosts:
        why = "this server fetches none" if not hosts else "not in image_fetch.allow_hosts"
        raise APIError(400, f"image_url host {parts.netloc!r}: {why} (send a data: URL)", "image_url")
    deadline = time.monotonic() + fetch.timeout_s
    cap = limits.max_image_bytes
    try:
        with httpx.stream("GET", url, timeout=fetch.timeout_s, follow_redirects=False) as r:
            if r.status_code != 200:
                raise APIError(400, f"fetching image_url answered HTTP {r.status_code}", "image_url")
            if int(r.headers.get("content-length") or 0) > cap:
                raise APIError(413, f"image_url is over max_image_bytes {cap}", "image_url")
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > cap:
                    raise APIError(413, f"image_url is over max_image_bytes {cap}", "image_url")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("deadline")
    except httpx.TimeoutException:
        raise APIError(
            400, f"fetching image_url took over {fetch.timeout_s:g} s", "image_url", "image_fetch_timeout"
        ) from None
    except httpx.HTTPError as err:
        raise APIError(400, f"fetching image_url failed: {type(err).__name__}", "image_url") from None
    return bytes(data)


def _checked_image(data: bytes, limits: Limits) -> bytes:
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
