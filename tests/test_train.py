"""Ray Train + DeepSpeed on CPU (gloo, fp32): ZeRO-2/3 match a single process, exact deterministic resume,
recovery from a SIGKILLed worker, ZeRO-3 with a text-only rank, and export logits equal training logits."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _training_eval import assert_eval_matches_export
from conftest import SUITE, base_recipe
from ray.train import UserCallback
from vilaray.compose import recipe_data
from vilaray.config import recipe_from_dict
from vilaray.data.holdout import held_out
from vilaray.data.prepare import prepare
from vilaray.train.faults import FaultPlan
from vilaray.train.runner import StageResult, run_paths, run_stage

pytestmark = pytest.mark.slow

STEPS = 20


def stage_recipe(
    world_dir, assets_dir, run_root: Path, train: dict, freeze: dict | None = None, model=None
) -> dict:
    data = base_recipe(world_dir, assets_dir, run_root, seq_len=256, encode_cpus=0.25)["data"]
    data["sources"] = {
        "pairs": {"format": "pairs_parquet", "paths": ["pairs"], "epochs": 30},
        "text": {"format": "text_jsonl", "paths": ["text"], "epochs": 30},
    }
    data["mix"] = {"pairs": 0.7, "text": 0.3}
    data["holdout"] = 0.05
    train = {
        "data_mode": "deterministic",
        "max_steps": STEPS,
        "lr": 2e-3,
        "warmup_steps": 2,
        "cpus_per_worker": 0.25,
        "checkpoint_every": 5,
        "collective_timeout_s": 60,
        "max_failures": 0,
        **train,
    }
    return {
        "name": "t",
        "model": model or {"path": str(assets_dir)},
        "run_root": str(run_root),
        "stages": {
            "align": {
                "data": data,
                "freeze": freeze or {"projector": {"mode": "full"}, "language_model": {"mode": "full"}},
                "train": train,
                "validation": {"every": 10, "rows_per_source": 5},
            }
        },
    }


def run(raw: dict, run_name: str, **kw) -> StageResult:
    """The stage through `run_stage`: Ray Train by default, `launcher="local"` for one rank in this process."""
    recipe = recipe_from_dict(raw)
    return run_stage(recipe, "align", paths=run_paths(recipe, run_name, None), record_sample_ids=True, **kw)


def metrics(stage_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}  # a resumed step overwrites the pre-failure one


def sample_ids(stage_dir: Path) -> dict[int, list[str]]:
    """step -> ids consumed by all ranks at that step (the last record wins, as after a restart)."""
    out: dict[int, list[str]] = {}
    for rank_file in sorted((stage_dir / "samples").glob("rank*.jsonl")):
        per_rank = {}
        for line in rank_file.read_text().splitlines():
            rec = json.loads(line)
            per_rank[rec["step"]] = rec["ids"]
        for step, ids in per_rank.items():
            out.setdefault(step, []).extend(ids)
    return out


@pytest.fixture(scope="module")
def shared_prepared(ray_session, world_dir, assets_dir, tmp_path_factory):
    """One prepared (deterministic) mixture every run in this module trains on, and the single-process
    reference: the same trainer as one rank in this process (no Ray Train), DeepSpeed without ZeRO.
    Every reader's `plan` is counted through the stage (validation, preparation, provenance included)."""
    from vilaray.data.readers import READERS

    root = tmp_path_factory.mktemp("train")
    raw = stage_recipe(world_dir, assets_dir, root, {"num_workers": 1, "zero_stage": 0})
    plans: Counter = Counter()

    def counted(plan):
        def wrapper(source, *args, **kw):
            plans[source] += 1
            return plan(source, *args, **kw)

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        for reader in READERS.values():
            mp.setattr(reader, "plan", counted(reader.plan))
        result = run(raw, "single", launcher="local")
    return root, result.stage_dir, result, plans


def test_local_stage_plans_each_source_once_and_returns_its_result(shared_prepared):
    _, stage_dir, result, plans = shared_prepared
    assert plans == {"pairs": 1, "text": 1}
    assert (stage_dir / "validation.json").is_file() and (stage_dir / "prepared" / "stats.json").is_file()
    assert result.export == stage_dir / "export" and (result.export / "config.json").is_file()
    assert result.metrics["step"] == STEPS and result.metrics["loss"] == metrics(stage_dir)[STEPS]["loss"]
    assert result.checkpoint.name == f"checkpoint_{STEPS:06d}"


def copy_prepared(src_stage_dir: Path, root: Path, run_name: str) -> None:
    dst = root / run_name / "align" / "prepared"
    dst.mkdir(parents=True, exist_ok=True)
    for f in (src_stage_dir / "prepared").iterdir():
        (dst / f.name).write_bytes(f.read_bytes())


def rows_by_step(stage_dir: Path) -> dict[int, list[list[str]]]:
    """step -> the rows (each its sample ids) all ranks trained on, in a rank-independent order."""
    return {step: sorted(rows) for step, rows in sample_ids(stage_dir).items()}


# ZeRO-2/3 over 2 ranks give the single process's losses to ~1e-5 (fp32, gloo); a resume or a restart
# that restored anything wrongly would move them by far more after a few steps at this learning rate.
LOSS_TOL = 1e-4
# Held-out loss is a mean over rows that 2 ranks sum in another order than one process does, after 20
# offloaded fp32 Adam steps: ~3e-5 relative at losses of ~4.4 (measured 1.4e-4 absolute at step 20).
VAL_TOL = 3e-4


@pytest.fixture(scope="module")
def zero_runs(shared_prepared, world_dir, assets_dir):
    """The same 20 steps as the single process, on 2 ranks: ZeRO-2 with rank 1 SIGKILLed before step 7
    (restarted by FailureConfig), and ZeRO-3 (with CPU offload and activation checkpointing) stopped at
    step 10 by `stop_at_step` and resumed by a second submission of the same run."""
    root, single = shared_prepared[:2]
    out = {"single": single}
    copy_prepared(single, root, "zero2")
    train = {"num_workers": 2, "zero_stage": 2, "micro_batch_size": 2, "max_failures": 1}
    out["zero2"] = run(
        stage_recipe(world_dir, assets_dir, root, train), "zero2", faults=FaultPlan(sigkill_at=7)
    ).stage_dir
    # Offloading optimizer states and parameters and checkpointing activations may not change the math.
    copy_prepared(single, root, "zero3")
    train = {"num_workers": 2, "zero_stage": 3, "micro_batch_size": 2, "offload_optimizer": True,
             "offload_params": True, "activation_checkpointing": True}  # fmt: skip
    half = run(stage_recipe(world_dir, assets_dir, root, {**train, "stop_at_step": STEPS // 2}), "zero3")
    out["zero3_half"] = {
        "last_step": max(metrics(half.stage_dir)),
        "exported": (half.stage_dir / "export").exists(),
    }
    out["zero3_half_result"] = half
    seen = root / "zero3-callback.jsonl"
    out["zero3_result"] = run(
        stage_recipe(world_dir, assets_dir, root, train), "zero3", callbacks=[StepLog(str(seen))]
    )
    out["zero3"] = out["zero3_result"].stage_dir
    out["zero3_callback"] = [json.loads(x) for x in seen.read_text().splitlines()]
    return out


class StepLog(UserCallback):
    """A Train callback as Tune adds one (it runs in the Train controller): every report's step and loss
    as rank 0 sent them, and whether a checkpoint came with it."""

    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        with open(self.path, "a") as f:
            rec = {"step": metrics[0]["step"], "loss": metrics[0].get("loss"), "ckpt": checkpoint is not None}
            f.write(json.dumps(rec) + "\n")


def test_zero2_and_zero3_match_single_process(zero_runs):
    single = metrics(zero_runs["single"])
    assert len(single) == STEPS and all(single[s]["lr"] > 0 for s in single)
    assert single[STEPS]["loss"] < single[1]["loss"] * 0.9
    for name in ("zero2", "zero3"):
        other = metrics(zero_runs[name])
        for step in range(1, STEPS + 1):
            a, b = single[step]["loss"], other[step]["loss"]
            assert abs(a - b) <= LOSS_TOL, (name, step, a, b)
        # The same rows at every step, split across 2 ranks instead of one micro-batch of 4.
        assert rows_by_step(zero_runs[name]) == rows_by_step(zero_runs["single"])
        # Held-out loss: 5 rows per source dealt over 2 ranks (one rank runs a lockstep filler) gives the
        # single process's value; it is logged at every 10th step only.
        for step in (10, STEPS):
            for key in ("val_loss", "val_loss/pairs", "val_loss/text"):
                a, b = single[step][key], other[step][key]
                assert abs(a - b) <= VAL_TOL, (name, step, key, a, b)
        assert "val_loss" not in other[5]
    assert single[STEPS]["val_loss"] < single[10]["val_loss"]
    # No held-out sample was trained on.
    trained = {i for rows in sample_ids(zero_runs["single"]).values() for row in rows for i in row}
    assert trained and not any(held_out(i, 0.05) for i in trained)


def test_deterministic_resume_matches_straight_run(zero_runs):
    """`stop_at_step` ended the first submission at step 10 (checkpointed, not exported); the second
    resumed there and trained on exactly the rows a straight run takes, to the same losses."""
    assert zero_runs["zero3_half"] == {"last_step": STEPS // 2, "exported": False}
    resumed, straight = metrics(zero_runs["zero3"]), metrics(zero_runs["single"])
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert rows_by_step(zero_runs["zero3"]) == rows_by_step(zero_runs["single"])
    assert abs(resumed[STEPS]["loss"] - straight[STEPS]["loss"]) < LOSS_TOL
    assert (zero_runs["zero3"] / "export" / "config.json").is_file()
    # What `run_stage` hands back (a Tune trial reads it): no export while paused, then the export, the
    # last report and Ray Train's latest checkpoint; the added Train callback saw every report of the
    # second submission (steps 11-20: checkpoints at 15 and 20, validation at 20; the trainer reports
    # only those) with the losses the metrics file holds.
    half, done = zero_runs["zero3_half_result"], zero_runs["zero3_result"]
    assert half.export is None and half.metrics["step"] == STEPS // 2 and half.checkpoint is not None
    assert done.export == zero_runs["zero3"] / "export" and done.metrics["step"] == STEPS
    assert "val_loss" in done.metrics and done.checkpoint.path != half.checkpoint.path
    seen = zero_runs["zero3_callback"]
    assert [(r["step"], r["ckpt"]) for r in seen] == [(15, True), (20, True)]
    assert all(r["loss"] == resumed[r["step"]]["loss"] for r in seen)


def test_sigkilled_worker_resumes_from_checkpoint_on_the_next_samples(zero_runs):
    """Rank 1 SIGKILLed itself before step 7, once Ray Train had registered the step-5 checkpoint (a fault
    at an exact step, not a timer's guess); FailureConfig restarted the group from that checkpoint."""
    stage_dir = zero_runs["zero2"]
    killed = json.loads((stage_dir / "faults" / "sigkilled.json").read_text())
    assert killed["rank"] == 1 and killed["step"] == 7
    assert int((stage_dir / "pids" / "rank1.pid").read_text()) != killed["pid"]  # a new process finished
    lines = [json.loads(x) for x in (stage_dir / "samples" / "rank1.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines]
    restart = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    # Resumed right after a checkpoint (every 5 steps), not from scratch.
    assert steps[restart] > 1 and (steps[restart] - 1) % 5 == 0, steps
    assert steps[:restart] == list(range(1, 7)) and steps[restart] == 6, steps
    assert steps[-1] == STEPS
    # After the restart it trains on exactly the samples that follow the restored checkpoint.
    assert rows_by_step(stage_dir) == rows_by_step(zero_runs["single"])


def test_zero3_lora_downsample_text_only_rank_and_export_parity(ray_session, world_dir, assets_dir, tmp_path):
    """ZeRO-3 with one rank seeing only text rows (no deadlock), LoRA on the LLM, a downsample2x2
    projector, and the export (reloaded by transformers) giving the training logits to 1e-5."""
    model = {"path": str(assets_dir), "projector": "downsample2x2"}
    freeze = {"projector": {"mode": "full"}, "language_model": {"mode": "lora", "r": 4, "alpha": 8}}
    # The mixture's first rows for this model (16 image tokens per image), prepared without training.
    base = recipe_from_dict(stage_recipe(world_dir, assets_dir, tmp_path, {}, freeze, model))
    prep = prepare(recipe_data(base, "align"), tmp_path / "prep", max_rows=160)
    # Rewrite the prepared rows so that with 2 ranks x 1 row, rank 0 gets image rows and rank 1 text rows.
    table = pa.concat_tables([pq.read_table(p) for p in prep.shards])
    rows = table.to_pylist()
    with_images = [r for r in rows if r["images"]]
    text_only = [r for r in rows if not r["images"]]
    n = min(len(with_images), len(text_only), 12)
    assert n >= 6
    ordered = [r for pair in zip(with_images[:n], text_only[:n]) for r in pair]
    dst = tmp_path / "z3" / "align" / "prepared"
    dst.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ordered, schema=table.schema), dst / "shard-00000.parquet")
    (dst / "stats.json").write_text("{}")
    train = {
        "num_workers": 2,
        "zero_stage": 3,
        "micro_batch_size": 1,
        "max_steps": n,
        "export_tolerance": 1e-5,
    }
    raw = stage_recipe(world_dir, assets_dir, tmp_path, train, freeze, model)
    # Benchmarks inside training under ZeRO-3: 5 prompts per task over 2 ranks (one rank runs fillers).
    evaluation = {"limit": 5, "shots": [0], "tasks": ["shapes_vqa", "shapes_text_mc"]}
    raw["stages"]["align"]["evaluation"] = {
        "every": n,
        "suite": str(SUITE),
        "data_root": str(world_dir),
        "batch_size": 2,
        **evaluation,
    }
    stage_dir = run(raw, "z3").stage_dir
    assert len(metrics(stage_dir)) == n
    assert_eval_matches_export(stage_dir, n, evaluation, world_dir)
    per_rank = {
        int(f.stem[-1]): [json.loads(x)["ids"] for x in f.read_text().splitlines()]
        for f in (stage_dir / "samples").glob("rank*.jsonl")
    }
    text_ids = {i for r in text_only for i in r["sample_ids"]}
    assert all(i in text_ids for step_rows in per_rank[1] for row in step_rows for i in row)
    check = json.loads((stage_dir / "export_check.json").read_text())
    assert check["ok"] and check["max_abs_logit_diff"] <= 1e-5
    meta = json.loads((stage_dir / "export" / "vilaray.json").read_text())
    assert meta["projector"] == "downsample2x2"


def test_nonfinite_loss_skip_records_and_stop_names_the_step(shared_prepared, world_dir, assets_dir):
    """`skip` (one rank in this process): the NaN micro-batch is dropped, replaced by the next one
    (accumulation stays aligned), recorded and counted, and the run finishes; `stop` (a Ray Train worker):
    the run fails naming the step, and the worker's error reaches the driver. Both train on the module's
    prepared rows."""
    root, single = shared_prepared[:2]
    copy_prepared(single, root, "skip")
    train = {"num_workers": 1, "max_steps": 4, "grad_accum": 2, "micro_batch_size": 1, "on_nonfinite": "skip"}
    raw = stage_recipe(world_dir, assets_dir, root, train)
    stage_dir = run(raw, "skip", faults=FaultPlan(nonfinite_at=[3]), launcher="local").stage_dir
    rows = metrics(stage_dir)
    assert [rows[s]["nonfinite_skipped"] for s in (1, 2, 3, 4)] == [0, 0, 1, 1]
    assert all(math.isfinite(r["loss"]) for r in rows.values())
    skipped = [json.loads(x) for x in (stage_dir / "nonfinite" / "rank0.jsonl").read_text().splitlines()]
    assert [s["step"] for s in skipped] == [3]
    trained = [json.loads(x) for x in (stage_dir / "samples" / "rank0.jsonl").read_text().splitlines()]
    trained_ids = [i for r in trained for row in r["ids"] for i in row]
    assert not set(skipped[0]["sample_ids"][0]) & set(trained_ids)  # dropped, not trained on
    assert trained[2]["step"] == 3 and len(trained[2]["ids"]) == 2  # still a full accumulation window
    assert (stage_dir / "export" / "config.json").is_file()

    copy_prepared(single, root, "stop")
    raw["stages"]["align"]["train"] |= {"on_nonfinite": "stop"}
    with pytest.raises(Exception, match="non-finite loss at step 2"):
        run(raw, "stop", faults=FaultPlan(nonfinite_at=[2]))


def test_stop_at_step_and_resume_in_one_process(shared_prepared, world_dir, assets_dir):
    """The trainer's resume accounting without Ray Train: `stop_at_step` checkpoints and ends an invocation
    without an export or a change of LR schedule; the next invocation of the same run resumes from that
    checkpoint on exactly the rows the single-process run took next, to its losses."""
    root, single = shared_prepared[:2]
    copy_prepared(single, root, "resume")
    train = {"num_workers": 1, "zero_stage": 0}
    for stop in (3, 6):
        raw = stage_recipe(world_dir, assets_dir, root, {**train, "stop_at_step": stop})
        stage_dir = run(raw, "resume", launcher="local").stage_dir
        resumed = metrics(stage_dir)
        assert sorted(resumed) == list(range(1, stop + 1)) and not (stage_dir / "export").exists()
    straight = metrics(single)
    for step in range(1, 7):
        assert abs(resumed[step]["loss"] - straight[step]["loss"]) <= LOSS_TOL, step
    assert rows_by_step(stage_dir) == {s: rows for s, rows in rows_by_step(single).items() if s <= 6}
