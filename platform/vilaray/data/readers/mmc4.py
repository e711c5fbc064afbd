"""MMC4 interleaved documents (`docs_shard_*.jsonl[.gz|.zip]`: text_list + image_info) -> `interleaved` samples."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from vilaray.data.readers import register
from vilaray.data.readers.base import Shard
from vilaray.data.readers.images import REMOTE_DETAIL, decode_base64, image_root, resolve
from vilaray.data.readers.jsonl_base import JsonLinesReader
from vilaray.data.readers.records import BadRecord, require, require_text
from vilaray.data.sample import image_part, make_sample, text_part


@register
class Mmc4JsonlReader(JsonLinesReader):
    """Each image is placed immediately before its matched sentence (several on one sentence keep image_info order).

    Image bytes come from `image_base64` (MMC4 "ff"/core dumps) when present, else `image_root/image_name`
    (images fetched separately); an image with only `raw_url` is rejected as `remote_url`.
    MMC4 documents have no id field: ids are `<file>:<line>`.
    """

    format = "mmc4_jsonl"
    suffixes = (".jsonl", ".jsonl.gz", ".jsonl.zip")
    id_key = None

    def required(self, options: dict) -> tuple[str, ...]:
        return ("text_list",)

    def to_sample(self, shard: Shard, record: Any, record_id: str) -> dict:
        sentences = require(record, "text_list", list)
        infos = record.get("image_info") or []
        if not isinstance(infos, list):
            raise BadRecord("bad_schema", "image_info is not a list")
        root = image_root(shard)
        images_at = defaultdict(list)
        for n, info in enumerate(infos):
            images_at[_sentence_index(info, n, len(sentences))].append(info)
        segments = []
        for i, sentence in enumerate(sentences):
            segments += [image_part(_image_bytes(info, root)) for info in images_at[i]]
            segments.append(text_part(_sentence(sentence, i)))
        if not segments:
            raise BadRecord("empty", "text_list is empty")
        require_text(segments, "document")
        return make_sample(shard.source, record_id, "interleaved", segments)


def _sentence_index(info: Any, n: int, count: int) -> int:
    index = info.get("matched_text_index") if isinstance(info, dict) else None
    if isinstance(index, bool) or not isinstance(index, int):
        raise BadRecord("bad_schema", f"image_info[{n}].matched_text_index is {index!r}, not an int")
    if not 0 <= index < count:
        raise BadRecord("image_index_out_of_range", f"image_info[{n}] matches sentence {index} of {count}")
    return index


def _image_bytes(info: dict, root: str) -> bytes:
    if info.get("image_base64") is not None:
        return decode_base64(info["image_base64"])
    if info.get("image_name"):
        return resolve(info["image_name"], root)
    if info.get("raw_url"):
        raise BadRecord("remote_url", f"{REMOTE_DETAIL}: {str(info['raw_url'])[:200]}")
    raise BadRecord("bad_schema", "image_info entry has no image_base64, image_name or raw_url")


def _sentence(sentence: Any, i: int) -> str:
    if not isinstance(sentence, str):
        raise BadRecord("bad_schema", f"text_list[{i}] is a {type(sentence).__name__}, not a string")
    return sentence
