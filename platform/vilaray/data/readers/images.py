"""Raw image bytes from whatever a record holds: bytes, an HF Image struct, a data URL, base64, or a path/URI.

Readers never decode images (the tokenize stage decodes and validates them); they only fetch bytes.
Relative paths resolve under the shard's `image_root`, or the data file's own folder when none is set.
Web URLs (http/https) are rejected as `remote_url`: web images must be pre-downloaded, e.g. with img2dataset,
and given as paths or bytes, so that training never depends on a live website.
"""

from __future__ import annotations

import base64
import binascii
import functools
from typing import Any
from urllib.parse import unquote_to_bytes

from vilaray.data.readers.base import Shard, filesystem, read_bytes
from vilaray.data.readers.records import BadRecord

REMOTE_DETAIL = "web images must be pre-downloaded (e.g. with img2dataset) and given as paths or bytes"
_REMOTE_SCHEMES = ("http://", "https://")


def image_root(shard: Shard) -> str:
    if shard.image_root:
        return shard.image_root
    parent = shard.path.rstrip("/").rsplit("/", 1)
    return parent[0] if len(parent) == 2 and parent[0] else "."


def resolve(value: Any, root: str) -> bytes:
    """Bytes for one image reference; raises BadRecord with the reject reason when it cannot be had."""
    if value is None:
        raise BadRecord("missing_image", "image is null")
    for kind, fetch in _RESOLVERS:
        if isinstance(value, kind):
            return _nonempty(fetch(value, root))
    raise BadRecord("bad_schema", f"image is a {type(value).__name__}, expected bytes, struct or string")


def decode_base64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise BadRecord("bad_schema", f"base64 image is a {type(text).__name__}, not a string")
    compact = "".join(text.split())  # encoders often wrap base64 at 76 columns
    try:
        return _nonempty(base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True))
    except (binascii.Error, ValueError) as err:
        raise BadRecord("bad_base64", f"not valid base64 ({err}): {text[:80]!r}") from None


def decode_data_url(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise BadRecord("bad_base64", f"data URL without a ',' separator: {url[:80]!r}")
    if header.endswith(";base64"):
        return decode_base64(payload)
    return _nonempty(unquote_to_bytes(payload))


def read_image_file(name: str, root: str) -> bytes:
    if "://" in name or name.startswith("/"):
        return _read(name, lambda: read_bytes(name))
    fs, inner = _root_filesystem(root)
    path = inner.rstrip("/") + "/" + name
    return _read(f"{root.rstrip('/')}/{name}", lambda: _read_from(fs, path))


def _from_bytes(value: bytes | bytearray | memoryview, _root: str) -> bytes:
    return bytes(value)


def _from_struct(value: dict, root: str) -> bytes:
    # HF datasets' Image feature: bytes win; `path` is only a hint when bytes were embedded.
    if value.get("bytes") is not None:
        return resolve(value["bytes"], root)
    if value.get("path"):
        return resolve(value["path"], root)
    raise BadRecord("missing_image", f"image struct has neither bytes nor path: keys {sorted(value)}")


def _from_string(value: str, root: str) -> bytes:
    text = value.strip()
    if not text:
        raise BadRecord("missing_image", "image path is empty")
    if text.startswith("data:"):
        return decode_data_url(text)
    if text.lower().startswith(_REMOTE_SCHEMES):
        raise BadRecord("remote_url", f"{REMOTE_DETAIL}: {text[:200]}")
    return read_image_file(text, root)


_RESOLVERS = ((bytes | bytearray | memoryview, _from_bytes), (dict, _from_struct), (str, _from_string))


@functools.lru_cache(maxsize=32)
def _root_filesystem(root: str):
    # Building an object-store filesystem (credentials, region lookup) per image would dominate read time.
    return filesystem(root)


def _read_from(fs, path: str) -> bytes:
    with fs.open_input_stream(path, compression=None) as f:
        return f.read()


def _read(shown: str, fetch) -> bytes:
    try:
        return fetch()
    except OSError as err:
        raise BadRecord("missing_image", f"cannot read image {shown}: {err}") from None


def _nonempty(data: bytes) -> bytes:
    if not data:
        raise BadRecord("missing_image", "image has zero bytes")
    return data
