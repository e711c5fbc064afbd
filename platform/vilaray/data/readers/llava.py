"""LLaVA conversation data (blip_laion_cc_sbu_558k.json, llava_v1_5_mix665k.json, or .jsonl) -> `chat` samples.

A `.json` file is one JSON array and is loaded whole (LLaVA ships it that way; 665k records are ~1 GB of
Python objects, so split bigger sets into .jsonl, which is streamed line by line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from vilaray.data.readers import register
from vilaray.data.readers.base import Shard, open_input, read_bytes
from vilaray.data.readers.images import image_root, resolve
from vilaray.data.readers.jsonl_base import JsonLinesReader
from vilaray.data.readers.records import (
    IMAGE_PLACEHOLDER,
    STREAM_ERRORS,
    BadRecord,
    placeholder_count,
    require,
    require_text,
    split_placeholders,
)
from vilaray.data.sample import Reject, SourceError, make_sample

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ARRAY_SUFFIXES = (".json", ".json.gz")
PROBE_BYTES = 1 << 20


@register
class LlavaJsonReader(JsonLinesReader):
    """`<image>` in a turn marks where each image goes; an imaged record with no placeholder gets its images
    prepended to the first human turn (as LLaVA does). Roles: human -> user, gpt -> assistant."""

    format = "llava_json"
    suffixes = (".json", ".jsonl")

    def required(self, options: dict) -> tuple[str, ...]:
        return ("conversations",)

    def validate(self, path: str, options: dict) -> None:
        if not path.endswith(ARRAY_SUFFIXES):
            return super().validate(path, options)
        _check_array_head(path, self.format, self.required(options))

    def read(self, shard: Shard) -> Iterator[dict | Reject]:
        if not shard.path.endswith(ARRAY_SUFFIXES):
            yield from super().read(shard)
            return
        for index, record in enumerate(_load_array(shard.path, self.format)):
            yield self._convert(shard, index, record, b"")

    def to_sample(self, shard: Shard, record: Any, record_id: str) -> dict:
        turns = [_turn(t, n) for n, t in enumerate(require(record, "conversations", list))]
        if not turns:
            raise BadRecord("empty", "conversations is empty")
        refs = _image_refs(record.get("image"))
        turns = _place_images(turns, len(refs))
        root = image_root(shard)
        images = iter([resolve(ref, root) for ref in refs])
        messages = [{"role": role, "content": split_placeholders(value, images)} for role, value in turns]
        require_text([p for m in messages for p in m["content"]], "conversation")
        return make_sample(shard.source, record_id, "chat", messages=messages)


def _turn(turn: Any, n: int) -> tuple[str, str]:
    speaker = require(turn, "from", str)
    if speaker not in ROLES:
        raise BadRecord(
            "bad_schema", f"conversations[{n}].from is {speaker!r}, expected one of {sorted(ROLES)}"
        )
    return ROLES[speaker], require(turn, "value", str)


def _image_refs(image: Any) -> list:
    if image is None:
        return []
    if isinstance(image, list):
        return image
    return [image]


def _place_images(turns: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    placeholders = sum(placeholder_count(value) for _, value in turns)
    if placeholders == count:
        return turns
    first_user = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
    if placeholders or first_user is None:
        raise BadRecord(
            "image_count_mismatch", f"{placeholders} {IMAGE_PLACEHOLDER} placeholders, {count} images"
        )
    role, value = turns[first_user]
    return [*turns[:first_user], (role, f"{IMAGE_PLACEHOLDER}\n" * count + value), *turns[first_user + 1 :]]


def _check_array_head(path: str, fmt: str, required: tuple[str, ...]) -> None:
    """Cheap look at the first MB: a JSON array whose first element (if it fits) has the key fields."""
    try:
        with open_input(path) as f:
            head = f.read(PROBE_BYTES)
    except STREAM_ERRORS as err:
        raise SourceError(path, fmt, f"cannot read: {err}") from None
    text = head.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    if not text.startswith("["):
        raise SourceError(path, fmt, f"not a JSON array (starts with {text[:40]!r})")
    body = text[1:].lstrip()
    if not body or body.startswith("]"):
        return
    try:
        first, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError:
        if len(head) < PROBE_BYTES:
            raise SourceError(path, fmt, "not valid JSON") from None
        return  # first element is bigger than the probe: read() will judge it
    if not (isinstance(first, dict) and all(k in first for k in required)):
        raise SourceError(path, fmt, f"first element is not an object with fields {list(required)}")


def _load_array(path: str, fmt: str) -> list:
    try:
        records = json.loads(read_bytes(path))
    except (*STREAM_ERRORS, UnicodeDecodeError) as err:
        # The whole file is one value: if it does not parse, no record in it can be trusted.
        raise SourceError(path, fmt, f"not valid JSON: {err}") from None
    if not isinstance(records, list):
        raise SourceError(path, fmt, f"top-level value is a {type(records).__name__}, not an array")
    return records
