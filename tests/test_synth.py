"""The shapes world: determinism, upstream on-disk schemas, and train/eval disjointness by content."""

from __future__ import annotations

import base64
import io
import json
import math
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from vilaray.synth.chats import SHORT_ANSWER
from vilaray.synth.facts import fact_base
from vilaray.synth.render import render_icon, render_photo, scene_hash_of
from vilaray.synth.scenes import Scene, Shape, item_rng, question_split, sample_scene, scene_split
from vilaray.synth.world import SCALES, WorldManifest, build_world, world_texts

TRAIN_IMAGE_KINDS = ("llava_pretrain", "obelics_paths", "mmc4", "sft")


# `world` is the session's tiny world (conftest): seed 0, photo variant included.
@pytest.fixture(scope="module")
def root(world) -> Path:
    return world.root


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (64, 64)
    return image


# ------------------------------------------------------------------------------------------ determinism

SAMPLED_FILES = (
    "pairs/coyo-00000.parquet",
    "wds/pairs-00001.tar",
    "obelics/obelics-00000.parquet",
    "obelics_paths/obelics-00001.parquet",
    "mmc4/docs_shard_00000.jsonl",
    "mmc4_b64/docs_shard_00000.jsonl",
    "llava_pretrain/blip_laion_cc_sbu_558k.json",
    "sft/llava_v1_5_mix.json",
    "sft_messages/messages-00000.jsonl",
    "text/text-00000.jsonl",
    "text_sft/instructions-00001.jsonl",
    "eval/vqa/annotations.json",
    "eval/captions/captions_val.json",
    "eval/text_mc/test.jsonl",
    "photo/pairs/coyo-00000.parquet",
    "photo/obelics/obelics-00000.parquet",
    "manifest.json",
)


def test_same_seed_same_bytes_other_seed_other_bytes(root, tmp_path):
    again = build_world(tmp_path / "again", seed=0, scale="tiny", photo=True).root
    other = build_world(tmp_path / "other", seed=1, scale="tiny", photo=True).root
    for rel in SAMPLED_FILES:
        assert (root / rel).read_bytes() == (again / rel).read_bytes(), rel
        assert (root / rel).read_bytes() != (other / rel).read_bytes(), rel
    images = sorted(p.relative_to(root) for p in (root / "llava_pretrain/images").rglob("*.png"))
    assert images and all((root / p).read_bytes() == (again / p).read_bytes() for p in images)


def test_build_is_idempotent_and_replaces_only_its_own_worlds(tmp_path):
    out = tmp_path / "w"
    first = build_world(out, seed=3, scale="tiny")
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert build_world(out, seed=3, scale="tiny") == first
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    assert build_world(out, seed=4, scale="tiny").seed == 4
    assert not list(tmp_path.glob(".w.building-*"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not a world")
    with pytest.raises(FileExistsError):
        build_world(foreign, seed=0, scale="tiny")
    assert (foreign / "keep.txt").exists()


def test_manifest_lists_every_file_and_round_trips(world, root):
    loaded = WorldManifest.load(root)
    assert loaded == world and loaded.scale == SCALES.get("tiny") and loaded.photo
    for kind, rels in world.files.items():
        assert rels, kind
        assert all((root / rel).is_file() for rel in rels), kind
    for kind, rel in world.image_roots.items():
        assert (root / rel).is_dir(), kind
    data = json.loads((root / "manifest.json").read_text())
    assert data["seed"] == 0 and data["image_size"] == 64 and "sha256" in data["split_rule"]
    assert data["counts"]["pairs"] == SCALES.get("tiny").pairs


# -------------------------------------------------------------------------------------------- formats


def test_pairs_parquet_and_webdataset_hold_the_same_samples(world, root):
    tables = [pq.read_table(p) for p in world.paths("pairs")]
    assert len(tables) == SCALES.get("tiny").shards
    expected = pa.schema(
        [("id", pa.string()), ("url", pa.string()), ("text", pa.string()), ("image", pa.binary())]
    )
    assert all(t.schema.remove_metadata() == expected for t in tables)
    rows = [row for t in tables for row in t.to_pylist()]
    assert len(rows) == world.counts["pairs"]
    assert all(r["url"].startswith("https://shapes.invalid/") and r["text"] for r in rows)
    _png(rows[0]["image"])

    members: dict[str, dict[str, bytes]] = {}
    for path in world.paths("wds"):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
    assert list(members) == [r["id"] for r in rows]
    for r in rows:
        got = members[r["id"]]
        assert set(got) == {"png", "txt", "json"} and len(r["id"]) == 9 and r["id"].isdigit()
        assert got["png"] == r["image"] and got["txt"].decode() == r["text"]
        assert json.loads(got["json"]) == {"id": r["id"], "caption": r["text"]}


def test_llava_pretrain_json(world, root):
    entries = json.loads(world.paths("llava_pretrain")[0].read_text())
    assert len(entries) == world.counts["llava_pretrain"]
    images = root / world.image_roots["llava_pretrain"]
    for e in entries:
        assert set(e) == {"id", "image", "conversations"}
        assert e["image"] == f"{e['id'][:5]}/{e['id']}.png"
        assert e["conversations"][0] == {"from": "human", "value": "<image>\nDescribe the image briefly."}
        assert e["conversations"][1]["from"] == "gpt" and e["conversations"][1]["value"]
        _png((images / e["image"]).read_bytes())


def _check_obelics_row(row: dict) -> int:
    images, texts = row["images"], row["texts"]
    assert len(images) == len(texts) >= 3
    assert all((i is None) != (t is None) for i, t in zip(images, texts))
    metadata = json.loads(row["metadata"])
    assert isinstance(metadata, list) and len(metadata) == len(images)
    assert all((m is None) == (i is None) for m, i in zip(metadata, images))
    assert json.loads(row["general_metadata"])["url"].startswith("https://shapes.invalid/")
    n = sum(i is not None for i in images)
    assert 2 <= n <= 4
    return n


def test_obelics_parquet_inline_and_paths(world, root):
    inline = [r for p in world.paths("obelics") for r in pq.read_table(p).to_pylist()]
    paths = [r for p in world.paths("obelics_paths") for r in pq.read_table(p).to_pylist()]
    schema = pq.read_schema(world.paths("obelics")[0])
    assert schema.field("images").type == pa.list_(pa.binary())
    assert schema.field("texts").type == pa.list_(pa.string())
    assert (
        schema.field("metadata").type == pa.string() and schema.field("general_metadata").type == pa.string()
    )
    assert pq.read_schema(world.paths("obelics_paths")[0]).field("images").type == pa.list_(pa.string())
    assert len(inline) == len(paths) == world.counts["obelics"]
    image_root = root / world.image_roots["obelics_paths"]
    total = 0
    for a, b in zip(inline, paths):
        total += _check_obelics_row(a)
        _check_obelics_row(b)
        assert a["texts"] == b["texts"] and a["metadata"] == b["metadata"]
        for data, name in zip(a["images"], b["images"]):
            assert (data is None) == (name is None)
            if name is not None:
                assert (image_root / name).read_bytes() == data
    assert total == world.counts["obelics_images"]
    # The first text says what the document is; every image is followed by the sentence describing it.
    assert inline[0]["texts"][0] and inline[0]["images"][-1] is None


def test_mmc4_jsonl_files_and_base64(world, root):
    docs = [d for p in world.paths("mmc4") for d in _jsonl(p)]
    assert len(docs) == world.counts["mmc4"]
    image_root = root / world.image_roots["mmc4"]
    by_name = {}
    for d in docs:
        assert set(d) == {"url", "text_list", "image_info", "similarity_matrix"}
        assert all(isinstance(s, str) and s for s in d["text_list"])
        assert len(d["similarity_matrix"]) == len(d["image_info"])
        for k, info in enumerate(d["image_info"]):
            assert set(info) == {"image_name", "raw_url", "matched_text_index", "matched_sim"}
            assert 0 <= info["matched_text_index"] < len(d["text_list"])
            row = d["similarity_matrix"][k]
            assert len(row) == len(d["text_list"]) and info["matched_sim"] == max(row)
            by_name[info["image_name"]] = _png((image_root / info["image_name"]).read_bytes())
    b64_docs = _jsonl(world.paths("mmc4_b64")[0])
    assert len(b64_docs) == world.counts["mmc4_b64"] and b64_docs[0]["url"] == docs[0]["url"]
    for info in b64_docs[0]["image_info"]:
        data = base64.b64decode(info["image_base64"])
        assert data == (image_root / info["image_name"]).read_bytes()


def test_text_corpus_and_text_instructions(world):
    texts = [r for p in world.paths("text") for r in _jsonl(p)]
    assert len(texts) == world.counts["text"] and all(set(r) == {"id", "text"} and r["text"] for r in texts)
    convs = [r for p in world.paths("text_sft") for r in _jsonl(p)]
    assert len(convs) == world.counts["text_sft"]
    for c in convs:
        roles = [m["role"] for m in c["messages"]]
        assert roles and roles == ["user", "assistant"] * (len(roles) // 2)
        assert all(isinstance(m["content"], str) and m["content"] for m in c["messages"])
    # Some replies are the fact's sentence, some (asked with LLaVA's short-answer suffix) its answer alone.
    facts = {f.answer for f in fact_base(0, SCALES.get("tiny").facts)}
    turns = [
        (u["content"], a["content"]) for c in convs for u, a in zip(c["messages"][::2], c["messages"][1::2])
    ]
    short = [(q, a) for q, a in turns if q.endswith("\n" + SHORT_ANSWER)]
    assert 0.3 < len(short) / len(turns) < 0.7
    assert all(a in facts for _, a in short)
    assert all(a.endswith(".") and "\n" not in q for q, a in turns if (q, a) not in short)


def test_llava_sft_mix(world, root):
    entries = json.loads(world.paths("sft")[0].read_text())
    assert len(entries) == world.counts["sft"]
    text_only = [e for e in entries if "image" not in e]
    assert len(text_only) == world.counts["sft_text_only"] > 0
    for e in entries:
        turns = e["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
        placeholders = [t["value"].count("<image>") for t in turns]
        if "image" in e:
            assert placeholders[0] == 1 and sum(placeholders) == 1
            _png((root / world.image_roots["sft"] / e["image"]).read_bytes())
        else:
            assert sum(placeholders) == 0


def _message_images(row: dict) -> list[bytes]:
    return [
        base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
        for m in row["messages"]
        if not isinstance(m["content"], str)
        for part in m["content"]
        if part["type"] == "image_url"
    ]


def test_openai_messages_with_data_urls(world):
    """Single-image chats (the image in the first turn) and image sequences (a new image in every user
    turn, each reply about its turn's image: the layout of a k-shot prompt)."""
    rows = [r for p in world.paths("sft_messages") for r in _jsonl(p)]
    assert len(rows) == world.counts["sft_messages"]
    sequences = 0
    for r in rows:
        first = r["messages"][0]
        assert first["role"] == "user" and first["content"][0]["type"] == "image_url"
        assert first["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
        images = _message_images(r)
        for image in images:
            _png(image)
        users = [m for m in r["messages"] if m["role"] == "user"]
        assert all(isinstance(u["content"], str) or u["content"][-1]["text"] for u in users)
        assert all(isinstance(m["content"], str) for m in r["messages"] if m["role"] == "assistant")
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"] * (len(r["messages"]) // 2)
        if len(images) > 1:
            sequences += 1
            assert len(images) == len(users) <= 4 and len(set(images)) == len(images)
            asks = [u["content"][-1]["text"] for u in users]  # one task across the sequence
            assert len(set(asks)) == 1 or all(a.endswith("a single word or phrase.") for a in asks), asks
        else:
            assert all(isinstance(u["content"], str) for u in users[1:])
    assert 0.25 * len(rows) <= sequences <= 0.75 * len(rows)


def test_a_caption_sequence_keeps_one_style():
    """A caption sequence's replies share one annotator's style, so its earlier replies say what form the
    next one takes, as a k-shot prompt's demonstrations do; styles still vary across sequences."""
    import random

    from vilaray.synth.chats import image_sequence_chat
    from vilaray.synth.language import CAPTIONS, caption

    def words(text: str) -> list[str]:
        return sorted(w.strip(".,;:") for w in text.lower().split())

    def styles(scene: Scene, reply: str) -> set[str]:
        # "colors" lists the shapes in a random order: compare words as a bag.
        return {n for n in CAPTIONS.names() if words(caption(scene, n, random.Random(0))) == words(reply)}

    used = []
    for seed in range(200):
        scenes = [sample_scene(item_rng(0, "st", seed * 4 + j), "train") for j in range(3)]
        chat = image_sequence_chat(f"c{seed}", scenes, item_rng(0, "st", seed))
        if chat.turns[0][0].endswith(SHORT_ANSWER):
            continue
        shared = set.intersection(*(styles(sc, reply) for sc, (_, reply) in zip(scenes, chat.turns)))
        assert shared, chat.turns
        used.append(min(shared))
    assert len(used) > 50 and len(set(used)) >= 5


def asked_pairs(scene: Scene, earlier: list[Scene]) -> set[tuple[str, str]]:
    from vilaray.synth.language import distractor_questions

    return {(q.question, q.answer) for q in distractor_questions(scene, earlier)}


def test_distractor_questions_are_answered_differently_by_an_earlier_image_and_not_always_no():
    """What a reply must read its own turn's image for: a question an earlier image answers otherwise, with
    as many answers 0 or no as not (all-negative ones were learnt as "a later turn answers no")."""
    from vilaray.synth.chats import image_sequence_chat
    from vilaray.synth.language import sentence

    red_star = Scene((Shape("star", "red", "small", "center"), Shape("circle", "blue", "large", "left")))
    blue_circle = Scene((Shape("circle", "blue", "small", "top"),))
    assert asked_pairs(red_star, [blue_circle]) == {
        ("how many stars are there?", "1"),
        ("is there a red star?", "yes"),
    }
    # Two negatives and no positive: one of them, not both.
    negatives = {("how many stars are there?", "0"), ("is there a red star?", "no")}
    assert len(asked_pairs(blue_circle, [red_star])) == 1 and asked_pairs(blue_circle, [red_star]) < negatives
    assert asked_pairs(red_star, []) == set() and asked_pairs(red_star, [red_star]) == set()
    # In the world's short-answer image sequences, a later turn asks one about half the time it can, and
    # about half of those asked are answered 0 or no.
    turns = [
        (turn, scenes[: i + 1])
        for seed in range(400)
        for scenes in [[sample_scene(item_rng(0, "dx", seed * 4 + j), "train") for j in range(3)]]
        for i, turn in enumerate(image_sequence_chat(f"c{seed}", scenes, item_rng(0, "dx", seed), 0.5).turns)
        if turn[0].endswith(SHORT_ANSWER) and i
    ]
    can = [(t, asked) for t, s in turns if (asked := asked_pairs(s[-1], s[:-1]))]
    hits = [t for t, asked in can if any(t[0].startswith(sentence(q)) and t[1] == a for q, a in asked)]
    assert 0.35 * len(can) <= len(hits) <= 0.85 * len(can) and len(can) > 100, (len(hits), len(can))
    negative = sum(answer in ("0", "no") for _, answer in hits)
    assert 0.3 * len(hits) <= negative <= 0.7 * len(hits), (negative, len(hits))


@pytest.mark.parametrize(("subdir", "subtype"), [("eval/vqa", "val"), ("eval/vqa_train", "train")])
def test_vqa_questions_and_annotations(root, subdir, subtype):
    questions = json.loads((root / subdir / "questions.json").read_text())
    annotations = json.loads((root / subdir / "annotations.json").read_text())["annotations"]
    assert questions["task_type"] == "Open-Ended" and questions["data_subtype"] == subtype
    assert len(questions["questions"]) == len(annotations) > 0
    qids = {q["question_id"] for q in questions["questions"]}
    assert qids == {a["question_id"] for a in annotations} and len(qids) == len(annotations)
    for q in questions["questions"]:
        assert isinstance(q["image_id"], int) and q["question"].endswith("?")
        _png((root / subdir / "images" / f"shapes_{subtype}_{q['image_id']:012d}.png").read_bytes())
    for a in annotations:
        assert a["answer_type"] in {"yes/no", "number", "other"} and a["question_type"]
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
        assert all(x["answer_confidence"] == "yes" for x in a["answers"])
        counts = Counter(x["answer"] for x in a["answers"])
        assert counts[a["multiple_choice_answer"]] == max(counts.values())


@pytest.mark.parametrize(("subdir", "subtype"), [("eval/captions", "val"), ("eval/captions_train", "train")])
def test_coco_captions(root, subdir, subtype):
    coco = json.loads((root / subdir / f"captions_{subtype}.json").read_text())
    ids = {im["id"] for im in coco["images"]}
    assert ids and len(coco["annotations"]) == 5 * len(ids)
    assert {a["image_id"] for a in coco["annotations"]} == ids
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for im in coco["images"]:
        assert (im["height"], im["width"]) == (64, 64)
        _png((root / subdir / "images" / im["file_name"]).read_bytes())


def test_text_multiple_choice(root):
    for name in ("test.jsonl", "dev.jsonl"):
        items = _jsonl(root / "eval/text_mc" / name)
        assert items
        for item in items:
            assert set(item) == {"question", "subject", "choices", "answer"}
            assert len(item["choices"]) == len(set(item["choices"])) == 4 and 0 <= item["answer"] < 4
    test = _jsonl(root / "eval/text_mc/test.jsonl")
    assert all(question_split(item["question"]) == "eval" for item in test)
    assert {item["subject"] for item in test} >= {"creatures", "arithmetic"}


def test_photo_variant_is_512px_jpeg(world):
    pairs = [r for p in world.paths("photo_pairs") for r in pq.read_table(p).to_pylist()]
    plain = [r for p in world.paths("pairs") for r in pq.read_table(p).to_pylist()]
    assert len(pairs) == world.counts["photo_pairs"]
    for photo, icon in zip(pairs, plain):
        image = Image.open(io.BytesIO(photo["image"]))
        assert image.format == "JPEG" and image.size == (512, 512)
        assert 20_000 < len(photo["image"]) < 120_000
        assert (photo["id"], photo["text"]) == (icon["id"], icon["text"])
        assert scene_hash_of(photo["image"]) == scene_hash_of(icon["image"])
    docs = [r for p in world.paths("photo_obelics") for r in pq.read_table(p).to_pylist()]
    assert len(docs) == world.counts["photo_obelics"]
    for row in docs:
        _check_obelics_row(row)
        first = next(i for i in row["images"] if i is not None)
        assert Image.open(io.BytesIO(first)).size == (512, 512)


# -------------------------------------------------------------------------------------------- splits


def _train_images(world: WorldManifest, root: Path):
    for kind in TRAIN_IMAGE_KINDS:
        if kind in world.image_roots:
            yield from ((kind, p.read_bytes()) for p in (root / world.image_roots[kind]).rglob("*.png"))
    for row in (r for p in world.paths("sft_messages") for r in _jsonl(p)):
        yield from (("sft_messages", image) for image in _message_images(row))
    for p in world.paths("pairs") + world.paths("obelics"):
        for column in pq.read_table(p, columns=["image" if "coyo" in p.name else "images"]).columns:
            for value in column.to_pylist():
                for data in value if isinstance(value, list) else [value]:
                    if data is not None:
                        yield p.parent.name, data


def test_no_eval_scene_in_any_training_file(world, root):
    train = {}
    for kind, data in _train_images(world, root):
        h = scene_hash_of(data)
        assert h is not None, kind
        train[h] = kind
    eval_hashes = {
        scene_hash_of(p.read_bytes())
        for d in ("eval/vqa", "eval/captions")
        for p in (root / d).rglob("*.png")
    }
    support = {
        scene_hash_of(p.read_bytes())
        for d in ("eval/vqa_train", "eval/captions_train")
        for p in (root / d).rglob("*.png")
    }
    assert eval_hashes and support and len(train) > 100
    assert not eval_hashes & set(train), {h: train[h] for h in eval_hashes & set(train)}
    assert not eval_hashes & support
    # The manifest's count of distinct train scenes covers the support splits too.
    assert len(set(train) | support) == world.counts["train_scenes_distinct"]
    assert len(eval_hashes) == world.counts["eval_scenes_distinct"]


def test_scene_hash_is_canonical_and_decides_the_split():
    a, b = Shape("circle", "red", "large", "left"), Shape("star", "blue", "small", "top")
    assert Scene((a, b)).hash() == Scene((b, a)).hash() != Scene((a,)).hash()
    # Golden values: changing the rule silently would leak old eval scenes into new training data.
    assert Scene((a, b)).canonical() == "circle:red:large:left|star:blue:small:top"
    assert Scene((a, b)).hash() == "96570df82af3ad21" and scene_split(Scene((a, b))) == "train"
    rng = item_rng(0, "test", 0)
    scenes = [sample_scene(rng) for _ in range(2000)]
    share = sum(scene_split(s) == "eval" for s in scenes) / len(scenes)
    assert 0.06 < share < 0.14
    assert scene_split(sample_scene(rng, "eval")) == "eval"
    for s in scenes[:50]:
        data = render_icon(s, 64, item_rng(0, "r", 1))
        assert scene_hash_of(data) == s.hash() and data == render_icon(s, 64, item_rng(0, "r", 1))
    photo = render_photo(scenes[0], 128, item_rng(0, "p", 0))
    assert (
        photo == render_photo(scenes[0], 128, item_rng(0, "p", 0))
        and scene_hash_of(photo) == scenes[0].hash()
    )


def test_world_texts_cover_training_text_and_no_eval_question(world):
    texts = list(world_texts(world.root))
    assert texts and all(isinstance(t, str) and t for t in texts)
    joined = "\n".join(texts)
    assert "<image>" not in joined
    for phrase in ("Describe the image briefly.", "Answer the question using a single word or phrase."):
        assert phrase in joined
    test = _jsonl(world.root / "eval/text_mc/test.jsonl")
    assert not [item["question"] for item in test if item["question"] in joined]


# A tower small enough to pretrain in a second or two.
SMALL_TOWER = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
)


def test_tower_pretraining_learns_what_is_where_from_train_scenes_only(monkeypatch):
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from vilaray.synth import tower as tower_mod
    from vilaray.synth.scenes import scene_split

    drawn = []
    real = tower_mod.sample_scene

    def spy(rng, split=None):
        scene = real(rng, split=split)
        drawn.append(scene)
        return scene

    monkeypatch.setattr(tower_mod, "sample_scene", spy)
    cfg = SiglipVisionConfig(**SMALL_TOWER)
    torch.manual_seed(0)
    before = tower_mod.pretrain_tower(SiglipVisionModel(cfg), tower_mod.TowerPretraining(steps=0, scenes=512))
    after = tower_mod.pretrain_tower(
        SiglipVisionModel(cfg), tower_mod.TowerPretraining(steps=150, scenes=512)
    )
    assert drawn and all(scene_split(s) == "train" for s in drawn)
    # Held-back scenes: 60% of the (position, attribute) slots are "none", so a blind guess gets ~0.6.
    assert after["readout_accuracy"] > 0.8 > before["readout_accuracy"]


def test_tiny_lm_arrives_pretrained_on_the_worlds_text(small_world_dir, small_assets_dir, assets_dir):
    """The demo's assets: their LM beats the same architecture at random init on text documents it never
    trained on (those the data pipeline holds out), measured here, not read from the build's own report."""
    import torch
    from transformers import AutoTokenizer, LlavaForConditionalGeneration
    from vilaray.synth.lm import LMPretraining, corpus, mean_loss, token_blocks

    cfg = LMPretraining()
    assets_dir, tiny_assets = small_assets_dir, assets_dir
    train, held = corpus(small_world_dir, cfg.holdout)
    assert len(held) > 20 and len(train) > 10 * len(held)
    tokenizer = AutoTokenizer.from_pretrained(str(assets_dir))
    blocks = token_blocks(tokenizer, held, cfg.seq_len)
    pretrained = LlavaForConditionalGeneration.from_pretrained(str(assets_dir))
    torch.manual_seed(0)
    random_init = LlavaForConditionalGeneration(pretrained.config)
    trained_loss, random_loss = mean_loss(pretrained, blocks, 8), mean_loss(random_init, blocks, 8)
    assert trained_loss < 0.5 * random_loss, (trained_loss, random_loss)
    report = json.loads((assets_dir / "vilaray.json").read_text())["lm_pretraining"]
    assert report["heldout_loss"] == pytest.approx(trained_loss, rel=0.05)
    assert report["steps"] == cfg.steps  # the demo's corpus is large enough for every step
    # The test world's corpus is a few blocks: pretraining stops after `max_epochs` passes over it.
    tiny = json.loads((tiny_assets / "vilaray.json").read_text())["lm_pretraining"]
    blocks = tiny["train_tokens"] // cfg.seq_len
    assert tiny["steps"] == math.ceil(cfg.max_epochs * blocks / cfg.batch) < cfg.steps
    assert tiny["heldout_loss"] < tiny["random_init_heldout_loss"]


def test_assets_are_rebuilt_for_a_rebuilt_world(tmp_path, world_dir, assets_dir):
    """Assets built from a world are reused for it, and not for a world of another version, seed or scale
    (its texts differ, so its tokenizer and LM would be stale)."""
    from vilaray.synth.assets import TinyVLMSpec, assets_current

    assert assets_current(assets_dir, world_dir, TinyVLMSpec())
    assert not assets_current(assets_dir, world_dir, TinyVLMSpec(text_layers=8))
    other = tmp_path / "world"
    other.mkdir()
    manifest = json.loads((world_dir / "manifest.json").read_text())
    for key, value in (("version", manifest["version"] - 1), ("seed", manifest["seed"] + 1)):
        (other / "manifest.json").write_text(json.dumps({**manifest, key: value}))
        assert not assets_current(assets_dir, other, TinyVLMSpec())
    # The ICL probe's world (`--sequence-distractors`) keeps the shipped assets, as its README command asks.
    probe = {**manifest, "scale": {**manifest["scale"], "sequence_distractors": 0.5}}
    (other / "manifest.json").write_text(json.dumps(probe))
    assert assets_current(assets_dir, other, TinyVLMSpec())


def test_a_repeated_tower_pretraining_is_looked_up_as_training_again_would_give_it(monkeypatch):
    """The session builds assets for two worlds; their towers start from the same weights, so the second
    build looks the trained tower up. What it gets is what training again gives: weights, stats and the
    RNG state after; a tower from other initial weights is trained."""
    import copy

    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from vilaray.synth import tower as tower_mod

    trained = []
    real = tower_mod.pretrain_tower
    monkeypatch.setattr(tower_mod, "pretrain_tower", lambda t, c: trained.append(c) or real(t, c))
    cfg = SiglipVisionConfig(**SMALL_TOWER)
    settings = tower_mod.TowerPretraining(steps=20, scenes=128, seed=3)
    torch.manual_seed(0)
    first = SiglipVisionModel(cfg)
    again, reference = copy.deepcopy(first), copy.deepcopy(first)

    stats = tower_mod.pretrain_tower_once(first, settings)
    torch.manual_seed(123)  # whatever the caller did in between
    assert tower_mod.pretrain_tower_once(again, settings) == stats and len(trained) == 1
    rng_after_lookup = torch.get_rng_state()
    assert real(reference, settings) == stats
    assert torch.equal(rng_after_lookup, torch.get_rng_state())
    looked_up, trained_first = again.state_dict(), first.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(looked_up[name], tensor) and torch.equal(trained_first[name], tensor)
    assert not again.training

    other = SiglipVisionModel(cfg)  # drawn after the lookup: other initial weights
    tower_mod.pretrain_tower_once(other, settings)
    assert len(trained) == 2
