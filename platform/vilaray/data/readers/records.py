"""Per-record plumbing shared by readers: BadRecord, record ids, and turning a record into a sample or Reject."""

from __future__ import annotations

import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from vilaray.data.readers.base import Shard
from vilaray.data.sample import Reject, image_part, text_part

IMAGE_PLACEHOLDER = "<image>"
_PLACEHOLDER_SPLIT = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)})")


# What a damaged file raises part-way through (pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors).
STREAM_ERRORS = (OSError, EOFError, ValueError, tarfile.TarError, zipfile.BadZipFile, zlib.error)


class BadRecord(Exception):
    """Raised while converting one record; the reader turns it into a Reject and moves on."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def fallback_id(shard: Shard, row: int) -> str:
    """`<file basename>:<row index>`: stable across runs because files and rows are read in a fixed order."""
    return f"{basename(shard.path)}:{row}"


def own_id(record: Any, fallback: str, key: str = "id") -> str:
    """The record's own id when it has a usable one (string or int), else the positional fallback."""
    value = record.get(key) if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return fallback
    return str(value)


def build(shard: Shard, record_id: str, record: Any, convert: Callable[[], dict]) -> dict | Reject:
    """Run `convert`; any failure on this record becomes a Reject so one bad record never stops a shard."""
    try:
        return convert()
    except BadRecord as err:
        return Reject(err.reason, shard.source, record_id, err.detail, record)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        # An unexpected shape that slipped past explicit checks is still a schema problem of this record.
        return Reject("bad_schema", shard.source, record_id, f"{type(err).__name__}: {err}", record)


def stream_guard(shard: Shard, records: Iterator[dict | Reject], where: Callable[[], str]):
    """Yield from `records`; a stream that breaks mid-file (truncated gzip/tar/zip) ends in one `truncated` Reject.

    Everything before the break has already been yielded, so a damaged tail costs only the tail.
    """
    try:
        yield from records
    except STREAM_ERRORS as err:
        yield Reject("truncated", shard.source, where(), f"stream broke: {type(err).__name__}: {err}", None)


def require(record: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(record, dict):
        raise BadRecord("bad_schema", f"record is a {type(record).__name__}, not an object")
    if key not in record:
        raise BadRecord("bad_schema", f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise BadRecord("bad_schema", f"field {key!r} is {type(value).__name__}, expected {_names(kind)}")
    return value


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return "|".join(k.__name__ for k in kinds)


def placeholder_count(text: str) -> int:
    return text.count(IMAGE_PLACEHOLDER)


def split_placeholders(text: str, images: Iterator[bytes]) -> list[dict]:
    """Parts of `text` with each `<image>` replaced by the next image; empty text pieces are dropped."""
    parts = []
    for piece in _PLACEHOLDER_SPLIT.split(text):
        if piece == IMAGE_PLACEHOLDER:
            parts.append(image_part(next(images)))
        elif piece:
            parts.append(text_part(piece))
    return parts


def require_text(parts: list[dict], what: str = "record") -> None:
    """Reject records with no text at all: a sample of images alone teaches the language model nothing."""
    if not any(p["text"] and p["text"].strip() for p in parts):
        raise BadRecord("empty", f"{what} has no text")


def nonblank_text(value: Any, what: str) -> str:
    """A text field that must carry words: null or blank is `empty`, any other non-string is `bad_schema`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRecord("empty", f"{what} is empty")
    if not isinstance(value, str):
        raise BadRecord("bad_schema", f"{what} is a {type(value).__name__}, not a string")
    return value
