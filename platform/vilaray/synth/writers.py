"""On-disk formats, byte-for-byte deterministic: COYO/OBELICS Parquet, MMC4/LLaVA/OpenAI JSON, WebDataset tar.

Every writer takes already-rendered records and a `Sink` rooted at the world directory; the Sink records
each data file it writes (relative path, by kind) for the manifest. Image files referenced by a data
file are written through the Sink too but listed under `image_roots`, not `files`.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vilaray.synth.chats import Chat
from vilaray.synth.documents import DocImage, Document

LLAVA_PRETRAIN_PROMPT = "<image>\nDescribe the image briefly."
PARQUET_ROW_GROUP = 128  # small row groups so a reader can split one shard across Ray tasks


@dataclass
class Sink:
    root: Path
    files: dict[str, list[str]] = field(default_factory=dict)
    image_roots: dict[str, str] = field(default_factory=dict)

    def path(self, rel: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, kind: str, rel: str) -> None:
        self.files.setdefault(kind, []).append(rel)

    def write_bytes(self, rel: str, data: bytes, kind: str | None = None) -> None:
        self.path(rel).write_bytes(data)
        if kind:
            self.record(kind, rel)

    def write_json(self, rel: str, obj: Any, kind: str | None = None) -> None:
        self.write_bytes(rel, json.dumps(obj, ensure_ascii=False).encode(), kind)

    def write_jsonl(self, rel: str, rows: Iterable[Any], kind: str) -> None:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        self.write_bytes(rel, text.encode(), kind)

    def write_parquet(self, rel: str, table: pa.Table, kind: str) -> None:
        pq.write_table(table, self.path(rel), row_group_size=PARQUET_ROW_GROUP, compression="snappy")
        self.record(kind, rel)


def shard(items: Sequence[Any], shards: int) -> list[Sequence[Any]]:
    """`shards` contiguous, near-equal slices (fewer when there are fewer items, never an empty one)."""
    shards = max(1, min(shards, len(items)))
    bounds = [round(i * len(items) / shards) for i in range(shards + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(shards)]


# ---------------------------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pair:
    id: str
    url: str
    caption: str
    image: bytes


PAIRS_SCHEMA = pa.schema(
    [("id", pa.string()), ("url", pa.string()), ("text", pa.string()), ("image", pa.binary())]
)


def write_pairs_parquet(sink: Sink, kind: str, rel_dir: str, pairs: Sequence[Pair], shards: int) -> None:
    for n, part in enumerate(shard(pairs, shards)):
        columns = {
            "id": [p.id for p in part],
            "url": [p.url for p in part],
            "text": [p.caption for p in part],
            "image": [p.image for p in part],
        }
        sink.write_parquet(f"{rel_dir}/coyo-{n:05d}.parquet", pa.table(columns, schema=PAIRS_SCHEMA), kind)


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: same bytes on every build
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(sink: Sink, kind: str, rel_dir: str, pairs: Sequence[Pair], shards: int) -> None:
    for n, part in enumerate(shard(pairs, shards)):
        rel = f"{rel_dir}/pairs-{n:05d}.tar"
        with tarfile.open(sink.path(rel), "w", format=tarfile.USTAR_FORMAT) as tar:
            for p in part:
                _tar_member(tar, f"{p.id}.png", p.image)
                _tar_member(tar, f"{p.id}.txt", p.caption.encode())
                _tar_member(tar, f"{p.id}.json", json.dumps({"id": p.id, "caption": p.caption}).encode())
        sink.record(kind, rel)


def llava_image_path(sample_id: str) -> str:
    return f"{sample_id[:5]}/{sample_id}.png"


def write_llava_pretrain(sink: Sink, kind: str, rel_dir: str, pairs: Sequence[Pair]) -> None:
    entries = []
    for p in pairs:
        image = llava_image_path(p.id)
        sink.write_bytes(f"{rel_dir}/images/{image}", p.image)
        conversations = [
            {"from": "human", "value": LLAVA_PRETRAIN_PROMPT},
            {"from": "gpt", "value": p.caption},
        ]
        entries.append({"id": p.id, "image": image, "conversations": conversations})
    sink.write_json(f"{rel_dir}/blip_laion_cc_sbu_558k.json", entries, kind)
    sink.image_roots[kind] = f"{rel_dir}/images"


# ------------------------------------------------------------------------------------------ documents


@dataclass(frozen=True)
class RenderedDoc:
    doc: Document
    url: str
    images: tuple[bytes, ...]  # aligned with doc.images
    names: tuple[str, ...]  # file name of each image
    sizes: tuple[tuple[int, int], ...]  # (width, height) of each image
    similarity: tuple[tuple[float, ...], ...]  # image x sentence


def _obelics_positions(rd: RenderedDoc) -> list[tuple[str | None, int | None]]:
    """(text, image index) per OBELICS position; exactly one of the two is set."""
    index = {id(im): k for k, im in enumerate(rd.doc.images)}
    return [(None, index[id(b)]) if isinstance(b, DocImage) else (b, None) for b in rd.doc.blocks()]


def _obelics_metadata(rd: RenderedDoc, positions: list[tuple[str | None, int | None]]) -> str:
    meta: list[dict | None] = []
    for _, k in positions:
        if k is None:
            meta.append(None)
            continue
        src = f"https://shapes.invalid/img/{rd.names[k]}"
        width, height = rd.sizes[k]
        meta.append(
            {
                "document_url": rd.url,
                "unformatted_src": src,
                "src": src,
                "formatted_filename": rd.names[k],
                "alt_text": "",
                "original_width": width,
                "original_height": height,
            }
        )
    return json.dumps(meta)


OBELICS_SCHEMA = pa.schema(
    [
        ("images", pa.list_(pa.binary())),
        ("metadata", pa.string()),
        ("general_metadata", pa.string()),
        ("texts", pa.list_(pa.string())),
    ]
)
OBELICS_PATHS_SCHEMA = pa.schema(
    [
        ("images", pa.list_(pa.string())),
        ("metadata", pa.string()),
        ("general_metadata", pa.string()),
        ("texts", pa.list_(pa.string())),
    ]
)


def write_obelics(
    sink: Sink,
    kind: str,
    rel_dir: str,
    docs: Sequence[RenderedDoc],
    shards: int,
    paths_kind: str | None = None,
    paths_dir: str | None = None,
) -> None:
    """OBELICS Parquet with inline image bytes; with `paths_dir`, also a copy whose images are file names."""
    for n, part in enumerate(shard(docs, shards)):
        rows: dict[str, list] = {
            "images": [],
            "paths": [],
            "metadata": [],
            "general_metadata": [],
            "texts": [],
        }
        for rd in part:
            positions = _obelics_positions(rd)
            rows["images"].append([None if k is None else rd.images[k] for _, k in positions])
            rows["paths"].append([None if k is None else rd.names[k] for _, k in positions])
            rows["texts"].append([text for text, _ in positions])
            rows["metadata"].append(_obelics_metadata(rd, positions))
            rows["general_metadata"].append(
                json.dumps(
                    {
                        "url": rd.url,
                        "warc_filename": "shapes/synthetic.warc.gz",
                        "warc_record_offset": 0,
                        "warc_record_length": 0,
                    }
                )
            )
        common = {k: rows[k] for k in ("metadata", "general_metadata", "texts")}
        name = f"obelics-{n:05d}.parquet"
        sink.write_parquet(
            f"{rel_dir}/{name}", pa.table({"images": rows["images"], **common}, schema=OBELICS_SCHEMA), kind
        )
        if paths_dir and paths_kind:
            table = pa.table({"images": rows["paths"], **common}, schema=OBELICS_PATHS_SCHEMA)
            sink.write_parquet(f"{paths_dir}/{name}", table, paths_kind)
            for rd in part:
                for image, file_name in zip(rd.images, rd.names):
                    sink.write_bytes(f"{paths_dir}/images/{file_name}", image)
    if paths_dir and paths_kind:
        sink.image_roots[paths_kind] = f"{paths_dir}/images"


def _mmc4_row(rd: RenderedDoc, inline: bool) -> dict:
    info = []
    for k, im in enumerate(rd.doc.images):
        item = {
            "image_name": rd.names[k],
            "raw_url": f"https://shapes.invalid/img/{rd.names[k]}",
            "matched_text_index": im.sentence_index,
            "matched_sim": rd.similarity[k][im.sentence_index],
        }
        if inline:
            item["image_base64"] = base64.b64encode(rd.images[k]).decode()
        info.append(item)
    return {
        "url": rd.url,
        "text_list": list(rd.doc.sentences),
        "image_info": info,
        "similarity_matrix": [list(row) for row in rd.similarity],
    }


def write_mmc4(
    sink: Sink, kind: str, rel_dir: str, docs: Sequence[RenderedDoc], shards: int, b64_kind: str, b64_dir: str
) -> None:
    """MMC4 jsonl shards with image files; the first shard again with base64 images inline."""
    for n, part in enumerate(shard(docs, shards)):
        name = f"docs_shard_{n:05d}.jsonl"
        sink.write_jsonl(f"{rel_dir}/{name}", [_mmc4_row(rd, inline=False) for rd in part], kind)
        for rd in part:
            for image, file_name in zip(rd.images, rd.names):
                sink.write_bytes(f"{rel_dir}/images/{file_name}", image)
        if n == 0:
            sink.write_jsonl(f"{b64_dir}/{name}", [_mmc4_row(rd, inline=True) for rd in part], b64_kind)
    sink.image_roots[kind] = f"{rel_dir}/images"


# ------------------------------------------------------------------------------------- text and chats


def write_text(sink: Sink, kind: str, rel_dir: str, texts: Sequence[tuple[str, str]], shards: int) -> None:
    for n, part in enumerate(shard(texts, shards)):
        sink.write_jsonl(f"{rel_dir}/text-{n:05d}.jsonl", [{"id": i, "text": t} for i, t in part], kind)


@dataclass(frozen=True)
class ImageChat:
    chat: Chat
    image: bytes | None
    image_first: bool = True  # where `<image>` sits in the first human turn (LLaVA data has both)
    # Image-sequence chats (messages format only): the images of user turns 2, 3, ... in order.
    later_images: tuple[bytes, ...] = ()


def _llava_conversations(item: ImageChat) -> list[dict]:
    out = []
    for k, (user, assistant) in enumerate(item.chat.turns):
        if k == 0 and item.image is not None:
            user = f"<image>\n{user}" if item.image_first else f"{user}\n<image>"
        out += [{"from": "human", "value": user}, {"from": "gpt", "value": assistant}]
    return out


def write_llava_sft(sink: Sink, kind: str, rel_dir: str, items: Sequence[ImageChat]) -> None:
    entries = []
    for item in items:
        entry: dict[str, Any] = {"id": item.chat.id}
        if item.image is not None:
            entry["image"] = llava_image_path(item.chat.id)
            sink.write_bytes(f"{rel_dir}/images/{entry['image']}", item.image)
        entry["conversations"] = _llava_conversations(item)
        entries.append(entry)
    sink.write_json(f"{rel_dir}/llava_v1_5_mix.json", entries, kind)
    sink.image_roots[kind] = f"{rel_dir}/images"


def openai_messages(item: ImageChat) -> list[dict]:
    messages: list[dict] = []
    images = [item.image, *item.later_images]
    for k, (user, assistant) in enumerate(item.chat.turns):
        if k < len(images) and images[k] is not None:
            url = "data:image/png;base64," + base64.b64encode(images[k]).decode()
            content: Any = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": user}]
        else:
            content = user
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": assistant}]
    return messages


def write_messages(
    sink: Sink, kind: str, rel_dir: str, prefix: str, items: Sequence[ImageChat], shards: int
) -> None:
    for n, part in enumerate(shard(items, shards)):
        rows = [{"id": item.chat.id, "messages": openai_messages(item)} for item in part]
        sink.write_jsonl(f"{rel_dir}/{prefix}-{n:05d}.jsonl", rows, kind)
