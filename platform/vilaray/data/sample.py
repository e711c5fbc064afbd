"""The canonical sample every reader emits, and the Reject a reader emits instead of a bad record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["interleaved", "pair", "text", "chat"]
KINDS: tuple[str, ...] = ("interleaved", "pair", "text", "chat")


def text_part(text: str) -> dict:
    return {"text": text, "image": None}


def image_part(data: bytes) -> dict:
    return {"text": None, "image": data}


def make_sample(
    source: str,
    sample_id: str,
    kind: Kind,
    segments: list[dict] | None = None,
    messages: list[dict] | None = None,
) -> dict:
    """A canonical sample: one Arrow-friendly struct shape for every source.

    `segments` (interleaved, pair, text) is an ordered list of parts, each `{"text": str | None,
    "image": bytes | None}` with exactly one set. `messages` (chat) is a list of
    `{"role": "system"|"user"|"assistant", "content": [part, ...]}`.
    """
    return {
        "source": source,
        "id": sample_id,
        "kind": kind,
        "segments": segments or [],
        "messages": messages or [],
    }


@dataclass(frozen=True)
class Reject:
    """A record a reader could not turn into a sample: counted per reason and quarantined."""

    reason: str
    source: str
    record_id: str
    detail: str = ""
    record: Any = field(default=None, compare=False)

    def to_json(self, max_chars: int = 4000) -> str:
        try:
            body = json.dumps(self.record, default=_short_repr)
        except (TypeError, ValueError):
            body = json.dumps(_short_repr(self.record))
        if len(body) > max_chars:
            body = json.dumps(body[:max_chars] + "...[truncated]")
        return (
            json.dumps(
                {
                    "reason": self.reason,
                    "source": self.source,
                    "id": self.record_id,
                    "detail": self.detail[:500],
                }
            )[:-1]
            + f', "record": {body}}}'
        )


def _short_repr(obj: Any) -> str:
    if isinstance(obj, bytes | bytearray):
        return f"<{len(obj)} bytes>"
    text = repr(obj)
    return text if len(text) <= 200 else text[:200] + "..."


class SourceError(RuntimeError):
    """A whole source is unreadable or not in its declared format: fail fast, naming path and format."""

    def __init__(self, path: str, fmt: str, why: str):
        super().__init__(f"source {path!r} is not readable as {fmt!r}: {why}")
        self.path, self.format, self.why = path, fmt, why
