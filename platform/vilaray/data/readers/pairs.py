"""COYO-700M / LAION image-caption pairs in Parquet (as img2dataset writes them) -> `pair` samples."""

from __future__ import annotations

from vilaray.data.readers import register
from vilaray.data.readers.base import Shard
from vilaray.data.readers.images import image_root, resolve
from vilaray.data.readers.parquet_base import Column, ParquetReader, is_image, is_text
from vilaray.data.readers.records import nonblank_text
from vilaray.data.sample import image_part, make_sample, text_part


@register
class PairsParquetReader(ParquetReader):
    """Columns found by alias (img2dataset writes `key`/`caption`/`jpg`); `<role>_column` options override.

    The image cell may be bytes, an HF Image struct, or a path/URI under image_root; rows whose download
    failed (null image) are rejected as `missing_image`, http(s) URLs as `remote_url` (run img2dataset first).
    """

    format = "pairs_parquet"
    columns = (
        Column("id", ("id", "key"), None, required=False),
        Column("url", ("url",), None, required=False),
        Column("text", ("text", "caption", "TEXT", "txt"), is_text),
        Column("image", ("image", "jpg", "png", "img"), is_image),
    )

    def to_sample(self, shard: Shard, row: dict, record_id: str) -> dict:
        caption = nonblank_text(row["text"], "caption")
        image = resolve(row["image"], image_root(shard))
        return make_sample(shard.source, record_id, "pair", [image_part(image), text_part(caption)])
