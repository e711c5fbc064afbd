"""Tiny files in the upstream corpus layouts (Parquet, JSON lines, LLaVA JSON, WebDataset tar) for reader tests."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(seed: int) -> bytes:
    """A real 4x4 PNG whose colour depends on `seed`, so every image in a test has distinct bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (seed * 40 % 256, seed * 90 % 256, seed * 160 % 256)).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_images(root: Path, names: dict[str, bytes]) -> Path:
    for name, data in names.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_parquet(
    path: Path, columns: dict[str, list], types: dict[str, pa.DataType] | None = None, rows_per_group=None
):
    types = types or {}
    table = pa.table({name: pa.array(values, type=types.get(name)) for name, values in columns.items()})
    pq.write_table(table, path, row_group_size=rows_per_group)
    return path


def jsonl_bytes(lines: list) -> bytes:
    """Dicts become JSON lines; bytes are written verbatim (broken lines, invalid UTF-8)."""
    return b"".join((ln if isinstance(ln, bytes) else json.dumps(ln).encode()) + b"\n" for ln in lines)


def write_jsonl(path: Path, lines: list) -> Path:
    """Writes .jsonl, .jsonl.gz or .jsonl.zip (one member, as MMC4 ships `docs_shard_*.jsonl.zip`)."""
    body = jsonl_bytes(lines)
    if path.name.endswith(".gz"):
        body = gzip.compress(body)
    elif path.name.endswith(".zip"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(path.name.removesuffix(".zip"), body)
        body = buf.getvalue()
    path.write_bytes(body)
    return path


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def mmc4_doc(url: str, sentences: list[str], images: list[dict]) -> dict:
    """An MMC4 document line: image_info entries carry image_name/raw_url/matched_text_index (+ image_base64)."""
    return {
        "url": url,
        "text_list": sentences,
        "image_info": [
            {"raw_url": f"http://img.example/{n}.jpg", "matched_sim": 0.3, **info}
            for n, info in enumerate(images)
        ],
        "similarity_matrix": [[0.1] * len(sentences) for _ in images],
    }


def llava_record(rid: str, turns: list[tuple[str, str]], image=None) -> dict:
    record = {"id": rid, "conversations": [{"from": who, "value": value} for who, value in turns]}
    if image is not None:
        record["image"] = image
    return record
