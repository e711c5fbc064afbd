"""Text-only corpora (`{"text": ..., "id"?}` per line, .jsonl or .jsonl.gz) -> `text` samples."""

from __future__ import annotations

from typing import Any

from vilaray.data.readers import register
from vilaray.data.readers.base import Shard
from vilaray.data.readers.jsonl_base import JsonLinesReader
from vilaray.data.readers.records import BadRecord, nonblank_text
from vilaray.data.sample import make_sample, text_part


@register
class TextJsonlReader(JsonLinesReader):
    """Option `text_field` names the text key (default "text"), e.g. "content" for some web corpora."""

    format = "text_jsonl"

    def required(self, options: dict) -> tuple[str, ...]:
        return (options.get("text_field", "text"),)

    def to_sample(self, shard: Shard, record: Any, record_id: str) -> dict:
        if not isinstance(record, dict):
            raise BadRecord("bad_schema", f"record is a {type(record).__name__}, not an object")
        (field,) = self.required(shard.options)
        if field not in record:
            raise BadRecord("bad_schema", f"no {field!r} field")
        text = nonblank_text(record[field], field)
        return make_sample(shard.source, record_id, "text", [text_part(text)])
