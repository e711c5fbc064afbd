"""What one build generates, product by product: each renders its records and hands them to a writer."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vilaray.registry import Registry
from vilaray.synth.chats import Chat, image_chat, image_sequence_chat, text_chat
from vilaray.synth.documents import make_document, similarity_matrix
from vilaray.synth.eval_writers import CaptionImage, VqaImage, write_coco_captions, write_vqa
from vilaray.synth.facts import Fact, corpus_paragraph, fact_base, mc_item
from vilaray.synth.language import (
    human_answers,
    most_common,
    random_caption,
    reference_captions,
    vqa_questions,
)
from vilaray.synth.manifest import MANIFEST, VERSION, WorldManifest, WorldScale
from vilaray.synth.render import render_icon, render_photo
from vilaray.synth.scenes import Scene, Split, item_rng, sample_scene
from vilaray.synth.writers import (
    ImageChat,
    Pair,
    RenderedDoc,
    Sink,
    shard,
    write_llava_pretrain,
    write_llava_sft,
    write_messages,
    write_mmc4,
    write_obelics,
    write_pairs_parquet,
    write_text,
    write_webdataset,
)


@dataclass
class _Build:
    """State shared by the products of one build; images go through `icon` so splits are enforced."""

    seed: int
    scale: WorldScale
    sink: Sink
    facts: list[Fact]
    counts: dict[str, int] = field(default_factory=dict)
    scene_hashes: dict[str, set[str]] = field(default_factory=lambda: {"train": set(), "eval": set()})
    train_questions: set[str] = field(default_factory=set)
    eval_questions: set[str] = field(default_factory=set)

    def rng(self, stream: str, index: int) -> random.Random:
        return item_rng(self.seed, stream, index)

    def check(self, scene: Scene, split: Split) -> None:
        if scene.split != split:
            raise AssertionError(f"{split} file got a {scene.split} scene {scene.canonical()}")
        self.scene_hashes[split].add(scene.hash())

    def icon(self, scene: Scene, rng: random.Random, split: Split) -> bytes:
        self.check(scene, split)
        return render_icon(scene, self.scale.image_size, rng)

    def photo(self, scene: Scene, rng: random.Random, split: Split) -> bytes:
        self.check(scene, split)
        return render_photo(scene, self.scale.photo_size, rng)


Product = Callable[[_Build], None]
PRODUCTS: Registry[Product] = Registry("product")
PHOTO_PRODUCTS: Registry[Product] = Registry("photo product")


def _pair(b: _Build, stream: str, i: int, photo: bool = False) -> Pair:
    rng = b.rng(stream, i)
    scene = sample_scene(rng, "train")
    text = random_caption(scene, rng)
    image = b.photo(scene, rng, "train") if photo else b.icon(scene, rng, "train")
    sample_id = f"{i:09d}"
    return Pair(sample_id, f"https://shapes.invalid/{stream}/{sample_id}.png", text, image)


@PRODUCTS.register("pairs")
def _pairs(b: _Build) -> None:
    pairs = [_pair(b, "pairs", i) for i in range(b.scale.pairs)]
    write_pairs_parquet(b.sink, "pairs", "pairs", pairs, b.scale.shards)
    write_webdataset(b.sink, "wds", "wds", pairs, b.scale.shards)
    b.counts["pairs"] = b.counts["wds"] = len(pairs)


@PRODUCTS.register("llava_pretrain")
def _llava_pretrain(b: _Build) -> None:
    pairs = [_pair(b, "llava_pretrain", i) for i in range(b.scale.llava_pretrain)]
    write_llava_pretrain(b.sink, "llava_pretrain", "llava_pretrain", pairs)
    b.counts["llava_pretrain"] = len(pairs)


def _document(b: _Build, stream: str, i: int, photo: bool = False) -> RenderedDoc:
    rng = b.rng(stream, i)
    doc = make_document(f"{stream}-{i:07d}", rng, "train")
    render = b.photo if photo else b.icon
    size = b.scale.photo_size if photo else b.scale.image_size
    ext = "jpg" if photo else "png"
    return RenderedDoc(
        doc=doc,
        url=f"https://shapes.invalid/{stream}/{doc.id}.html",
        images=tuple(render(im.scene, rng, "train") for im in doc.images),
        names=tuple(f"{doc.id}-{k}.{ext}" for k in range(len(doc.images))),
        sizes=tuple((size, size) for _ in doc.images),
        similarity=tuple(tuple(row) for row in similarity_matrix(doc, rng)),
    )


@PRODUCTS.register("obelics")
def _obelics(b: _Build) -> None:
    docs = [_document(b, "obelics", i) for i in range(b.scale.obelics_docs)]
    write_obelics(b.sink, "obelics", "obelics", docs, b.scale.shards, "obelics_paths", "obelics_paths")
    b.counts["obelics"] = b.counts["obelics_paths"] = len(docs)
    b.counts["obelics_images"] = sum(len(d.images) for d in docs)


@PRODUCTS.register("mmc4")
def _mmc4(b: _Build) -> None:
    docs = [_document(b, "mmc4", i) for i in range(b.scale.mmc4_docs)]
    write_mmc4(b.sink, "mmc4", "mmc4", docs, b.scale.shards, "mmc4_b64", "mmc4_b64")
    b.counts["mmc4"] = len(docs)
    b.counts["mmc4_images"] = sum(len(d.images) for d in docs)
    b.counts["mmc4_b64"] = len(shard(docs, b.scale.shards)[0])


@PRODUCTS.register("text")
def _text(b: _Build) -> None:
    texts = [(f"text-{i:07d}", corpus_paragraph(b.facts, b.rng("text", i))) for i in range(b.scale.text_docs)]
    write_text(b.sink, "text", "text", texts, b.scale.shards)
    b.counts["text"] = len(texts)


def _text_chat(b: _Build, stream: str, i: int, cover: bool) -> Chat:
    first = b.facts[i % len(b.facts)] if cover else None
    chat = text_chat(f"{stream}-{i:07d}", b.facts, b.rng(stream, i), first)
    b.train_questions.update(chat.asked)
    return chat


def _image_chat(b: _Build, stream: str, i: int, chat_id: str) -> ImageChat:
    rng = b.rng(stream, i)
    scene = sample_scene(rng, "train")
    image = b.icon(scene, rng, "train")
    return ImageChat(image_chat(chat_id, scene, rng), image, image_first=rng.random() < 0.9)


@PRODUCTS.register("sft")
def _sft(b: _Build) -> None:
    items = [_image_chat(b, "sft", i, f"{i:09d}") for i in range(b.scale.sft_image_chats)]
    items += [
        ImageChat(_text_chat(b, "sft_text", i, cover=False), None) for i in range(b.scale.sft_text_chats)
    ]
    # LLaVA's mix is shuffled; a deterministic shuffle keeps text-only entries spread through the file.
    item_rng(b.seed, "sft_order", 0).shuffle(items)
    write_llava_sft(b.sink, "sft", "sft", items)
    b.counts["sft"] = len(items)
    b.counts["sft_text_only"] = b.scale.sft_text_chats


# Of the OpenAI-messages SFT chats, this share are image sequences (2 to MAX_SEQUENCE_IMAGES images, a turn
# each); the rest are single-image chats like LLaVA's. Within the recipes' max_images_per_doc (4).
P_IMAGE_SEQUENCE = 0.5
MAX_SEQUENCE_IMAGES = 4


def _image_sequence(b: _Build, stream: str, i: int, chat_id: str) -> ImageChat:
    rng = b.rng(stream, i)
    scenes = [sample_scene(rng, "train") for _ in range(rng.randint(2, MAX_SEQUENCE_IMAGES))]
    images = [b.icon(scene, rng, "train") for scene in scenes]
    chat = image_sequence_chat(chat_id, scenes, rng, b.scale.sequence_distractors)
    return ImageChat(chat, images[0], later_images=tuple(images[1:]))


@PRODUCTS.register("sft_messages")
def _sft_messages(b: _Build) -> None:
    def chat(i: int) -> ImageChat:
        sequence = b.rng("sft_messages_kind", i).random() < P_IMAGE_SEQUENCE
        return (_image_sequence if sequence else _image_chat)(b, "sft_messages", i, f"msg-{i:07d}")

    items = [chat(i) for i in range(b.scale.message_chats)]
    write_messages(b.sink, "sft_messages", "sft_messages", "messages", items, b.scale.shards)
    b.counts["sft_messages"] = len(items)


@PRODUCTS.register("text_sft")
def _text_sft(b: _Build) -> None:
    # The first len(facts) conversations open on each fact in turn, so every fact is asked at least once.
    items = [
        ImageChat(_text_chat(b, "text_sft", i, cover=True), None) for i in range(b.scale.text_instructions)
    ]
    write_messages(b.sink, "text_sft", "text_sft", "instructions", items, b.scale.shards)
    b.counts["text_sft"] = len(items)


def _vqa_items(b: _Build, stream: str, split: Split, n: int, first_id: int) -> list[VqaImage]:
    items = []
    for i in range(n):
        rng = b.rng(stream, i)
        scene = sample_scene(rng, split)
        image_id = first_id + i
        questions = []
        for k, qa in enumerate(vqa_questions(scene, rng, b.scale.vqa_questions_per_image)):
            answers = human_answers(qa, rng)
            questions.append(
                {
                    "question": qa.question,
                    "question_id": image_id * 100 + k,
                    "question_type": qa.question_type,
                    "answer_type": qa.answer_type,
                    "answers": answers,
                    "multiple_choice_answer": most_common(answers),
                }
            )
        items.append(VqaImage(image_id, b.icon(scene, rng, split), tuple(questions)))
    return items


def _caption_items(b: _Build, stream: str, split: Split, n: int, first_id: int) -> list[CaptionImage]:
    items = []
    for i in range(n):
        rng = b.rng(stream, i)
        scene = sample_scene(rng, split)
        captions = tuple(reference_captions(scene, rng))
        items.append(CaptionImage(first_id + i, b.icon(scene, rng, split), captions, b.scale.image_size))
    return items


# Image ids are unique across subtypes (COCO-style), so val and support ids never collide.
SUPPORT_ID_BASE = 1_000_000


def _eval_info(b: _Build) -> dict:
    return {"description": "vilaray shapes world", "version": str(VERSION), "seed": b.seed}


@PRODUCTS.register("eval_vqa")
def _eval_vqa(b: _Build) -> None:
    val = _vqa_items(b, "vqa_val", "eval", b.scale.vqa_eval_images, 1)
    support = _vqa_items(b, "vqa_train", "train", b.scale.vqa_support_images, SUPPORT_ID_BASE + 1)
    write_vqa(b.sink, "eval_vqa", "eval/vqa", "val", val, _eval_info(b))
    write_vqa(b.sink, "eval_vqa_train", "eval/vqa_train", "train", support, _eval_info(b))
    b.counts["eval_vqa_images"], b.counts["eval_vqa_train_images"] = len(val), len(support)
    b.counts["eval_vqa_questions"] = sum(len(v.questions) for v in val)
    b.counts["eval_vqa_train_questions"] = sum(len(v.questions) for v in support)


@PRODUCTS.register("eval_captions")
def _eval_captions(b: _Build) -> None:
    val = _caption_items(b, "captions_val", "eval", b.scale.caption_eval_images, 1)
    support = _caption_items(
        b, "captions_train", "train", b.scale.caption_support_images, SUPPORT_ID_BASE + 1
    )
    write_coco_captions(b.sink, "eval_captions", "eval/captions", "val", val, _eval_info(b))
    write_coco_captions(b.sink, "eval_captions_train", "eval/captions_train", "train", support, _eval_info(b))
    b.counts["eval_captions_images"], b.counts["eval_captions_train_images"] = len(val), len(support)


@PRODUCTS.register("eval_text_mc")
def _eval_text_mc(b: _Build) -> None:
    # test: every held-out phrasing of every fact; dev: a few train phrasings per subject, for k-shot prompts.
    test, dev = [], []
    for f in b.facts:
        for q in f.questions_in("eval"):
            test.append(mc_item(f, q, b.rng("text_mc_test", len(test))).to_json())
            b.eval_questions.add(q)
    for topic in sorted({f.topic for f in b.facts}):
        topical = [f for f in b.facts if f.topic == topic and f.questions_in("train")]
        for f in topical[: b.scale.mc_dev_per_subject]:
            rng = b.rng("text_mc_dev", len(dev))
            dev.append(mc_item(f, rng.choice(f.questions_in("train")), rng).to_json())
    b.sink.write_jsonl("eval/text_mc/test.jsonl", test, "eval_text_mc")
    b.sink.write_jsonl("eval/text_mc/dev.jsonl", dev, "eval_text_mc")
    b.counts["eval_text_mc_test"], b.counts["eval_text_mc_dev"] = len(test), len(dev)


@PHOTO_PRODUCTS.register("photo_pairs")
def _photo_pairs(b: _Build) -> None:
    # Same stream as `pairs`: photo pair i shows pair i's scene with pair i's caption and id.
    pairs = [_pair(b, "pairs", i, photo=True) for i in range(b.scale.photo_pairs)]
    write_pairs_parquet(b.sink, "photo_pairs", "photo/pairs", pairs, b.scale.shards)
    b.counts["photo_pairs"] = len(pairs)


@PHOTO_PRODUCTS.register("photo_obelics")
def _photo_obelics(b: _Build) -> None:
    docs = [_document(b, "obelics", i, photo=True) for i in range(b.scale.photo_docs)]
    write_obelics(b.sink, "photo_obelics", "photo/obelics", docs, b.scale.shards)
    b.counts["photo_obelics"] = len(docs)
    b.counts["photo_obelics_images"] = sum(len(d.images) for d in docs)


def generate(root: Path, seed: int, scale: WorldScale, photo: bool) -> WorldManifest:
    """Write every product under `root` (which should be empty) and its manifest; assert split hygiene."""
    build = _Build(seed, scale, Sink(root), fact_base(seed, scale.facts))
    for _, make in PRODUCTS.items():
        make(build)
    if photo:
        for _, make in PHOTO_PRODUCTS.items():
            make(build)
    # Raised, not asserted: the check must survive `python -O`.
    if leaked := build.scene_hashes["train"] & build.scene_hashes["eval"]:
        raise AssertionError(f"scenes in both train and eval files: {sorted(leaked)[:5]}")
    if leaked := build.train_questions & build.eval_questions:
        raise AssertionError(f"questions in both train and eval files: {sorted(leaked)[:5]}")
    build.counts["facts"] = len(build.facts)
    build.counts["train_scenes_distinct"] = len(build.scene_hashes["train"])
    build.counts["eval_scenes_distinct"] = len(build.scene_hashes["eval"])
    files = {kind: sorted(paths) for kind, paths in sorted(build.sink.files.items())}
    manifest = WorldManifest(
        root,
        seed,
        scale,
        photo,
        dict(sorted(build.counts.items())),
        files,
        dict(sorted(build.sink.image_roots.items())),
    )
    (root / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return manifest
