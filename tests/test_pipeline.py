"""The Ray Data pipeline end to end: bad records counted and quarantined with every good record kept,
unreadable sources failing fast, and a token-weighted mixture streamed into a 2-worker TorchTrainer."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _formats import jsonl_bytes, llava_record, mmc4_doc, png, write_images, write_json, write_parquet
from conftest import TINY_RECIPE, base_recipe
from vilaray.compose import recipe_data
from vilaray.config import load_recipe, recipe_from_dict
from vilaray.data.prepare import prepare
from vilaray.data.sample import SourceError


def bomb_png(side: int = 60_000) -> bytes:
    """A tiny file whose header claims side x side pixels: decoding it would need gigabytes."""
    raw = png(1)
    ihdr = struct.pack(">II", side, side) + raw[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return raw[:16] + ihdr + crc + raw[33:]


def real_pairs(world_dir: Path, n: int) -> dict[str, list]:
    table = pq.read_table(next((world_dir / "pairs").glob("*.parquet"))).slice(0, n)
    return {k: table.column(k).to_pylist() for k in ("id", "url", "text", "image")}


@pytest.fixture(scope="module")
def dirty_corpus(world_dir, tmp_path_factory):
    """Five sources in their upstream layouts, each with good records and one bad record of every kind."""
    root = tmp_path_factory.mktemp("dirty")
    good: dict[str, set[str]] = {}
    expected: dict[str, dict[str, int]] = {}

    pairs = real_pairs(world_dir, 12)
    good["pairs"] = set(pairs["id"])
    for rid, image, text in [
        ("bad-corrupt", b"\x89PNG\r\n\x1a\n garbage", "a caption"),
        ("bad-bomb", bomb_png(), "a caption"),
        ("bad-empty", png(2), ""),
        ("bad-null", None, "a caption"),
    ]:
        for k, v in zip(("id", "url", "text", "image"), (rid, "https://x.invalid", text, image)):
            pairs[k].append(v)
    (root / "pairs").mkdir()
    write_parquet(root / "pairs" / "p.parquet", pairs)
    expected["pairs"] = {"corrupt_image": 1, "image_too_large": 1, "empty": 1, "missing_image": 1}

    lines = [{"id": f"t{i}", "text": f"Zorbs are purple, fact number {i}."} for i in range(10)]
    good["text"] = {f"t{i}" for i in range(10)}
    lines[3:3] = [b'{"id": "broken", "text": "no closing', b'{"id": "u", "text": "\xff\xfe bad"}']
    lines += [
        {"id": "wrong", "txt": "field"},
        {"id": "blank", "text": ""},
        {"id": "huge", "text": "z" * 5000},
    ]
    (root / "text").mkdir()
    (root / "text" / "t.jsonl").write_bytes(jsonl_bytes(lines))
    expected["text"] = {"broken_json": 1, "invalid_utf8": 1, "bad_schema": 1, "empty": 1, "oversized": 1}

    write_images(root / "mmc4" / "images", {f"m{i}.png": png(i) for i in range(4)})
    docs = [
        mmc4_doc(
            f"https://d/{i}",
            ["First sentence.", "Second sentence."],
            [{"image_name": f"m{i}.png", "matched_text_index": 1}],
        )
        for i in range(4)
    ]
    docs.append(mmc4_doc("https://d/oob", ["Only one."], [{"image_name": "m0.png", "matched_text_index": 7}]))
    docs.append(
        mmc4_doc("https://d/gone", ["Missing image."], [{"image_name": "nope.png", "matched_text_index": 0}])
    )
    (root / "mmc4" / "docs.jsonl").write_bytes(jsonl_bytes(docs))
    good["mmc4"] = {f"docs.jsonl:{i}" for i in range(4)}
    expected["mmc4"] = {"image_index_out_of_range": 1, "missing_image": 1}

    write_images(root / "llava" / "images", {f"l{i}.png": png(i + 10) for i in range(3)})
    recs = [
        llava_record(f"l{i}", [("human", "<image>\nWhat is it?"), ("gpt", "A circle.")], image=f"l{i}.png")
        for i in range(3)
    ]
    recs.append(llava_record("two", [("human", "<image> and <image>?"), ("gpt", "Two.")], image="l0.png"))
    write_json(root / "llava" / "chat.json", recs)
    good["llava"] = {f"l{i}" for i in range(3)}
    expected["llava"] = {"image_count_mismatch": 1}

    obelics = {
        "id": ["o0", "o1", "bad-misaligned", "bad-empty"],
        "images": [[png(30), None], [None, png(31), None], [png(32)], []],
        "texts": [[None, "A red square."], ["Look:", None, "a blue star."], [None, "extra"], []],
    }
    (root / "obelics").mkdir()
    write_parquet(root / "obelics" / "o.parquet", obelics)
    good["obelics"] = {"o0", "o1"}
    expected["obelics"] = {"misaligned": 1, "empty": 1}
    return root, good, expected


def dirty_recipe(root: Path, world_dir, assets_dir, run_root) -> dict:
    r = base_recipe(world_dir, assets_dir, run_root, root=str(root), stop_on="longest", max_doc_chars=4000)
    r["data"]["max_image_pixels"] = 1024 * 1024
    r["data"]["sources"] = {
        "pairs": {"format": "pairs_parquet", "paths": ["pairs"]},
        "text": {"format": "text_jsonl", "paths": ["text"]},
        "mmc4": {"format": "mmc4_jsonl", "paths": ["mmc4/docs.jsonl"], "image_root": "mmc4/images"},
        "llava": {"format": "llava_json", "paths": ["llava/chat.json"], "image_root": "llava/images"},
        "obelics": {"format": "obelics_parquet", "paths": ["obelics"]},
    }
    r["data"]["mix"] = {name: 1.0 for name in r["data"]["sources"]}
    r["data"]["encode_cpus"] = 0.25
    return r


def test_bad_records_counted_quarantined_and_good_kept(
    ray_session, dirty_corpus, world_dir, assets_dir, tmp_path
):
    root, good, expected = dirty_corpus
    recipe = recipe_from_dict(dirty_recipe(root, world_dir, assets_dir, tmp_path))
    result = prepare(recipe_data(recipe), tmp_path / "run")

    kept: dict[str, set[str]] = {}
    for shard in result.shards:
        t = pq.read_table(shard, columns=["source", "sample_ids"])
        for source, ids in zip(t.column("source").to_pylist(), t.column("sample_ids").to_pylist()):
            kept.setdefault(source, set()).update(ids)
    assert kept == good
    assert result.stats["skipped"] == expected
    for source, reasons in expected.items():
        for reason in reasons:
            lines = (tmp_path / "run" / "quarantine" / source / f"{reason}.jsonl").read_text().splitlines()
            assert len(lines) == 1 and json.loads(lines[0])["reason"] == reason
    assert json.loads((tmp_path / "run" / "quarantine" / "summary.json").read_text())["skipped"] == expected


@pytest.mark.parametrize("case", ["missing_path", "wrong_format"])
def test_unreadable_source_fails_fast_naming_path_and_format(
    ray_session, world_dir, assets_dir, tmp_path, case
):
    raw = base_recipe(world_dir, assets_dir, tmp_path)
    if case == "missing_path":
        raw["data"]["sources"]["pairs"]["paths"] = ["does/not/exist"]
        needle = ("does/not/exist", "pairs_parquet")
    else:
        raw["data"]["sources"]["interleaved"] = {"format": "obelics_parquet", "paths": ["text"]}
        needle = ("text", "obelics_parquet")
    with pytest.raises(SourceError) as err:
        prepare(recipe_data(recipe_from_dict(raw)), tmp_path / "run")
    assert all(n in str(err.value) for n in needle)
    assert not list((tmp_path / "run").glob("prepared/shard-*"))


def stream_loop(config: dict) -> None:
    """Train-worker loop: consume this rank's shard like training would and record what arrived."""
    import functools

    import ray.train
    import torch
    import torch.distributed as dist
    from vilaray.data.collate import collate_rows
    from vilaray.data.stats import StreamStats

    rank = ray.train.get_context().get_world_rank()
    collate = functools.partial(collate_rows, pad_id=config["pad_id"], image_size=config["image_size"])
    stats, steps = StreamStats(), 0
    shard = ray.train.get_dataset_shard("train")
    for batch in shard.iter_torch_batches(
        batch_size=config["batch_size"], collate_fn=collate, local_shuffle_buffer_size=64, drop_last=True
    ):
        stats.add_batch(batch)
        # A collective every step: if one rank had more steps than the other, this would hang (and the
        # short gloo timeout would fail the test) instead of finishing.
        dist.all_reduce(torch.ones(1))
        steps += 1
    out = Path(config["out"]) / f"rank{rank}.json"
    out.write_text(json.dumps({"steps": steps, **stats.to_dict()}))
    ray.train.report({"steps": steps})


def mixed_ids(dataset, n: int | None = None) -> list[list[str]]:
    """Each row's sample ids, in the mix's order: the first `n` rows, or every row to the stream's end."""
    out: list[list[str]] = []
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        out += batch.column("sample_ids").to_pylist()
        if n is not None and len(out) >= n:
            return out[:n]
    return out


def test_a_capped_mixture_gives_the_same_first_rows_then_stops(ray_session, world_dir, assets_dir, tmp_path):
    """`max_rows` (what a stage can train on) stops each source once it has given what the mix's first
    `max_rows` rows can hold: those rows are the uncapped mixture's, in its order, and the stream ends
    within a few blocks per source instead of tokenizing on."""
    from vilaray.data.pipeline import source_cap
    from vilaray.data.prepare import preserved_order
    from vilaray.data.quarantine import QuarantineActor

    raw = base_recipe(world_dir, assets_dir, tmp_path, seq_len=256, block_rows=4)
    for source in raw["data"]["sources"].values():
        source["epochs"] = 4
    recipe = recipe_from_dict(raw)
    planned, n = recipe_data(recipe), 16
    with preserved_order():
        uncapped = mixed_ids(planned.mixture(QuarantineActor.remote(None, 0)).dataset)
        capped = planned.mixture(QuarantineActor.remote(None, 0), max_rows=n)
        rows = mixed_ids(capped.dataset)
    assert rows[:n] == uncapped[:n]
    caps = sum(source_cap(n, w, recipe.data.block_rows) for w in capped.row_weights.values())
    assert n <= len(rows) <= caps < len(uncapped), (len(rows), caps, len(uncapped))


def test_mixture_streams_into_torchtrainer_with_token_shares(
    ray_session, small_world_dir, assets_dir, tmp_path
):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from vilaray.data.quarantine import QuarantineActor

    raw = base_recipe(small_world_dir, assets_dir, tmp_path, seq_len=256, encode_cpus=0.5, block_rows=4)
    for name, epochs in {"pairs": 10, "interleaved": 10, "text": 10}.items():
        raw["data"]["sources"][name]["epochs"] = epochs
    recipe = recipe_from_dict(raw)
    rows, batch_size = 10_000, 8
    mixture = recipe_data(recipe).mixture(QuarantineActor.remote(None, 0), max_rows=rows)
    trainer = TorchTrainer(
        stream_loop,
        train_loop_config={
            "pad_id": mixture.spec.pack.pad_id,
            "image_size": mixture.spec.geometry.image_size,
            "batch_size": batch_size,
            "out": str(tmp_path),
        },
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets={"train": mixture.dataset.limit(rows)},
        run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="stream"),
        torch_config=TorchConfig(backend="gloo", timeout_s=120),
    )
    trainer.fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["steps"] == ranks[1]["steps"] > 0
    # Each rank gets an equal share of the rows (the last partial batch is dropped on both).
    assert ranks[0]["steps"] * batch_size * 2 > rows - 2 * batch_size
    weights = recipe.data.weights()
    # The mixed stream is deterministic in rows per source, but which 4-row block goes to which rank is decided by
    # arrival timing, so one rank's share wanders by about +-0.015 (1 sigma over ~1250 blocks); the two ranks
    # together see the whole stream, whose token shares are what the weights promise.
    tokens = {s: sum(r["sources"][s]["tokens"] for r in ranks) for s in weights}
    shares = {s: t / sum(tokens.values()) for s, t in tokens.items()}
    for source, w in weights.items():
        assert abs(shares[source] - w) < 0.02, (source, shares, weights)
    for r in ranks:
        assert set(r["sources"]) == set(weights)
        for source, w in weights.items():
            assert abs(r["sources"][source]["share"] - w) < 0.08, (source, r["sources"], weights)


def test_the_recipe_seed_reaches_the_rows(world_dir, assets_dir):
    """Two seeds are two data orders, one seed is one: shard schedules and packing follow `seed=N` (a
    seed that reached only `train` left the deterministic rows alone, making a grid's seeds replicas)."""
    from vilaray.data.pipeline import SourceEncoder, shard_schedule

    def rows(seed: int) -> tuple[list, list]:
        flags = [f"defaults.data.root={world_dir}", f"model.path={assets_dir}", f"seed={seed}"]
        planned = recipe_data(load_recipe(TINY_RECIPE, flags), "pretrain")
        data = planned.config
        schedule = [
            json.loads(row["shard"])["path"]
            for name, shards in planned.plans.items()
            for row in shard_schedule(shards, data.sources[name].epochs, data.seed)
        ]
        encoder = SourceEncoder.local(planned.spec)
        window = next(encoder.packed_windows(encoder.samples(planned.plans["interleaved"]), data.pack_window))
        return schedule, [r["sample_ids"] for r in window]

    first = rows(0)
    assert rows(0) == first
    second = rows(1)
    assert second[0] != first[0] and sorted(second[0]) == sorted(first[0])
    assert second[1] != first[1] and sorted(sum(second[1], [])) == sorted(sum(first[1], []))
