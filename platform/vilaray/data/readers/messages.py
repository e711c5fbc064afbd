"""OpenAI-style chat records (`{"messages": [{"role", "content"}]}` per line) -> `chat` samples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vilaray.data.readers import register
from vilaray.data.readers.base import Shard
from vilaray.data.readers.images import image_root, resolve
from vilaray.data.readers.jsonl_base import JsonLinesReader
from vilaray.data.readers.records import (
    IMAGE_PLACEHOLDER,
    BadRecord,
    placeholder_count,
    require,
    require_text,
    split_placeholders,
)
from vilaray.data.sample import image_part, make_sample

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _text(part: dict) -> tuple[str, Any]:
    return "text", require(part, "text", str)


def _image_url(part: dict) -> tuple[str, Any]:
    value = part.get("image_url")
    return "image", value.get("url") if isinstance(value, dict) else value


def _image(part: dict) -> tuple[str, Any]:
    # transformers chat templates spell the same part {"type": "image", "url"|"path": ...}.
    return "image", next((part[k] for k in ("image", "url", "path") if part.get(k) is not None), None)


PARTS = {"text": _text, "image_url": _image_url, "image": _image}


@register
class MessagesJsonlReader(JsonLinesReader):
    """Content is a string or a list of text / image_url / image parts (data URL, path or URI, never http).

    A top-level `images` list (the LLaMA-Factory layout) fills `<image>` placeholders in text, in order;
    placeholders and images must then match in number (`image_count_mismatch`).
    """

    format = "messages_jsonl"

    def required(self, options: dict) -> tuple[str, ...]:
        return ("messages",)

    def to_sample(self, shard: Shard, record: Any, record_id: str) -> dict:
        root = image_root(shard)
        messages = parse_messages(record, lambda ref: resolve(ref, root))
        return make_sample(shard.source, record_id, "chat", messages=messages)


def parse_messages(record: Any, to_image: Callable[[Any], bytes]) -> list[dict]:
    """`{"messages": [...], "images"?: [...]}` -> canonical chat messages, image references turned into
    bytes by `to_image`; raises BadRecord naming what is wrong. The training reader and the Serve endpoint
    both parse with this, so a served conversation is the one training saw."""
    turns = [_turn(m, n) for n, m in enumerate(require(record, "messages", list))]
    if not turns:
        raise BadRecord("empty", "messages is empty")
    refs = _listed_images(record.get("images"))
    placeholders = sum(placeholder_count(v) for _, parts in turns for kind, v in parts if kind == "text")
    if placeholders != len(refs):
        raise BadRecord(
            "image_count_mismatch", f"{placeholders} {IMAGE_PLACEHOLDER} placeholders, {len(refs)} images"
        )
    pool = iter([to_image(ref) for ref in refs])
    messages = [{"role": role, "content": _content(parts, pool, to_image)} for role, parts in turns]
    require_text([p for m in messages for p in m["content"]], "conversation")
    return messages


def _turn(message: Any, n: int) -> tuple[str, list[tuple[str, Any]]]:
    role = require(message, "role", str)
    if role not in ROLES:
        raise BadRecord("bad_schema", f"messages[{n}].role is {role!r}, expected one of {sorted(ROLES)}")
    content = require(message, "content", (str, list))
    if isinstance(content, str):
        return ROLES[role], [("text", content)]
    return ROLES[role], [_part(part, n) for part in content]


def _part(part: Any, n: int) -> tuple[str, Any]:
    kind = require(part, "type", str)
    if kind not in PARTS:
        raise BadRecord("bad_schema", f"messages[{n}] has a {kind!r} part, expected one of {sorted(PARTS)}")
    return PARTS[kind](part)


def _content(parts: list[tuple[str, Any]], pool, to_image: Callable[[Any], bytes]) -> list[dict]:
    out = []
    for kind, value in parts:
        out += split_placeholders(value, pool) if kind == "text" else [image_part(to_image(value))]
    return out


def _listed_images(images: Any) -> list:
    if images is None:
        return []
    return images if isinstance(images, list) else [images]
