"""Build the shapes world on disk from a seed (`build_world`) and read its training text back (`world_texts`).

Layout below `out_dir` (counts per kind are in `manifest.json`; the split rule is in `vilaray.synth.scenes`):

    pairs/coyo-*.parquet               COYO/LAION pairs: id, url, text, image (PNG bytes)
    wds/pairs-*.tar                    the same pairs as WebDataset: <id>.png, <id>.txt, <id>.json
    llava_pretrain/blip_laion_cc_sbu_558k.json + images/<id[:5]>/<id>.png
    obelics/obelics-*.parquet          OBELICS: images list<binary>, texts list<string>, metadata, general_metadata
    obelics_paths/obelics-*.parquet    the same docs, images as file names under obelics_paths/images/
    mmc4/docs_shard_*.jsonl + images/  MMC4 (each image sits right before its matched sentence)
    mmc4_b64/docs_shard_00000.jsonl    mmc4's first shard again, images inline as image_base64
    text/text-*.jsonl                  plain corpus {"id", "text"}
    sft/llava_v1_5_mix.json + images/  LLaVA SFT mix (image and text-only conversations)
    sft_messages/messages-*.jsonl      OpenAI-style messages with data-URL images
    text_sft/instructions-*.jsonl      text-only instructions over the fact base, OpenAI messages
    eval/vqa, eval/vqa_train           VQA questions.json + annotations.json + images (held-out / support)
    eval/captions, eval/captions_train COCO captions_<subtype>.json + images (held-out / support)
    eval/text_mc/{test,dev}.jsonl      MMLU-style {"question", "subject", "choices", "answer"}
    photo/pairs, photo/obelics         photo-like 512 px JPEG variant (photo=True only)
    manifest.json
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq

from vilaray.registry import Registry
from vilaray.synth.manifest import MANIFEST, SCALES, VERSION, WorldManifest, WorldScale, resolve_scale
from vilaray.synth.products import generate

__all__ = ["SCALES", "WorldManifest", "WorldScale", "build_world", "world_texts"]


def _existing(root: Path, seed: int, scale: WorldScale, photo: bool) -> WorldManifest | None:
    try:
        manifest = WorldManifest.load(root)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same = manifest.version == VERSION and manifest.seed == seed and manifest.scale == scale
    return manifest if same and (manifest.photo or not photo) else None


def build_world(
    out_dir: str | Path = "artifacts/shapes",
    seed: int = 0,
    scale: WorldScale | str = "small",
    photo: bool = False,
) -> WorldManifest:
    """Generate the shapes world under `out_dir` (same seed and scale -> byte-identical files).

    Returns the existing world untouched when `out_dir/manifest.json` already describes this seed and
    scale (and has the photo variant if asked). Otherwise the world is built in a sibling temporary
    folder and swapped in, so a crash or a concurrent build never leaves a half-written world; an
    `out_dir` that holds other files (no manifest) is refused rather than deleted.
    """
    root = Path(out_dir)
    spec = resolve_scale(scale)
    if (found := _existing(root, seed, spec, photo)) is not None:
        return found
    if root.exists() and any(root.iterdir()) and not (root / MANIFEST).exists():
        raise FileExistsError(
            f"{root} exists, is not empty and holds no shapes-world manifest; refusing to replace"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate(tmp, seed, spec, photo)
        if (found := _existing(root, seed, spec, photo)) is not None:  # a concurrent build finished first
            return found
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return WorldManifest.load(root)


# -------------------------------------------------------------------------------------------- texts


def _strip_image(text: str) -> str:
    return text.replace("<image>", "").strip()


def _texts_pairs(path: Path) -> Iterator[str]:
    yield from pq.read_table(path, columns=["text"]).column("text").to_pylist()


def _texts_llava(path: Path) -> Iterator[str]:
    for entry in json.loads(path.read_text()):
        for turn in entry["conversations"]:
            yield _strip_image(turn["value"])


def _texts_obelics(path: Path) -> Iterator[str]:
    for texts in pq.read_table(path, columns=["texts"]).column("texts").to_pylist():
        yield from (t for t in texts if t is not None)


def _jsonl(path: Path) -> Iterator[dict]:
    with open(path) as f:
        for line in f:
            yield json.loads(line)


def _texts_mmc4(path: Path) -> Iterator[str]:
    for doc in _jsonl(path):
        yield from doc["text_list"]


def _texts_text(path: Path) -> Iterator[str]:
    for row in _jsonl(path):
        yield row["text"]


def _texts_messages(path: Path) -> Iterator[str]:
    for row in _jsonl(path):
        for message in row["messages"]:
            content = message["content"]
            if isinstance(content, str):
                yield content
            else:
                yield from (part["text"] for part in content if part.get("type") == "text")


# Each training corpus once: wds repeats pairs, obelics_paths repeats obelics, mmc4_b64 repeats mmc4.
TEXT_SOURCES: Registry[Callable[[Path], Iterator[str]]] = Registry(
    "text source",
    {
        "pairs": _texts_pairs,
        "llava_pretrain": _texts_llava,
        "obelics": _texts_obelics,
        "mmc4": _texts_mmc4,
        "text": _texts_text,
        "sft": _texts_llava,
        "sft_messages": _texts_messages,
        "text_sft": _texts_messages,
    },
)


def world_texts(out_dir: str | Path = "artifacts/shapes") -> Iterator[str]:
    """Every string of the training files (captions, documents, corpus, both sides of conversations).

    For training a tokenizer: `<image>` placeholders are removed, eval files are not read.
    """
    manifest = WorldManifest.load(out_dir)
    for kind, read in TEXT_SOURCES.items():
        for path in manifest.paths(kind):
            yield from read(path)
