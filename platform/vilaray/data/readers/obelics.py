"""OBELICS-style interleaved web documents in Parquet (aligned `images` / `texts` lists) -> `interleaved` samples."""

from __future__ import annotations

from typing import Any

from vilaray.data.readers import register
from vilaray.data.readers.base import Shard
from vilaray.data.readers.images import image_root, resolve
from vilaray.data.readers.parquet_base import Column, ParquetReader, is_image, is_text, list_of
from vilaray.data.readers.records import BadRecord, require_text
from vilaray.data.sample import image_part, make_sample, text_part


@register
class ObelicsParquetReader(ParquetReader):
    """Position i of a document is `images[i]` or `texts[i]`, exactly one non-null; segments keep list order.

    Upstream OBELICS stores image URLs, which are rejected as `remote_url`: download them first (img2dataset)
    and store bytes, HF Image structs or paths under image_root in `images`.
    """

    format = "obelics_parquet"
    columns = (
        Column("id", ("id",), None, required=False),
        Column("images", ("images",), list_of(is_image)),
        Column("texts", ("texts",), list_of(is_text)),
    )
    batch_rows = 32  # a document row may carry dozens of embedded images

    def to_sample(self, shard: Shard, row: dict, record_id: str) -> dict:
        images, texts = row["images"], row["texts"]
        if not isinstance(images, list) or not isinstance(texts, list):
            raise BadRecord("bad_schema", "`images` and `texts` must both be lists")
        if len(images) != len(texts):
            raise BadRecord("misaligned", f"{len(images)} image slots but {len(texts)} text slots")
        if not images:
            raise BadRecord("empty", "document has no segments")
        root = image_root(shard)
        segments = [_segment(i, image, text, root) for i, (image, text) in enumerate(zip(images, texts))]
        require_text(segments, "document")
        return make_sample(shard.source, record_id, "interleaved", segments)


def _segment(position: int, image: Any, text: Any, root: str) -> dict:
    has_image, has_text = not _absent(image), text is not None
    if has_image == has_text:
        which = "both an image and a text" if has_image else "neither an image nor a text"
        raise BadRecord("misaligned", f"position {position} has {which}")
    if has_image:
        return image_part(resolve(image, root))
    if not isinstance(text, str):
        raise BadRecord("bad_schema", f"texts[{position}] is a {type(text).__name__}, not a string")
    return text_part(text)


def _absent(image: Any) -> bool:
    # Some writers fill text positions of an Image-struct list with {"bytes": None, "path": None}.
    return image is None or (isinstance(image, dict) and all(v is None for v in image.values()))
