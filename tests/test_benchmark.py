"""The benchmarks on tiny shapes: both sides measured on the same rows or prompts, ratios computed from the
two measured sides, and each verdict shown to fire on a failing input (the speed verdict itself is the
benchmark's, not a test's: timings on a shared 2-core box are not assertions)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch


def test_data_benchmark_reports_throughput_and_packing(ray_session, bench_root):
    from vilaray.bench import BENCHMARKS
    from vilaray.bench.data import DataBenchConfig

    cfg = DataBenchConfig(
        root=str(bench_root), scale="tiny", pair_epochs=2, doc_epochs=2, pack_window=16, bracket=False
    )
    report = BENCHMARKS.get("data").run(cfg)
    out = json.loads(json.dumps(report.to_dict()))  # the JSON file's content, round-tripped

    # 4 photo pairs and 2 photo docs in the tiny world, each read twice; none is rejected.
    naive = out["naive"]["end_to_end"]
    assert naive["samples"] == 12 and naive["images"] > 0 and naive["tokens"] > naive["samples"]
    pipe = out["pipeline"]["end_to_end"]
    assert 0 < pipe["samples"] <= naive["samples"]  # the mix stops when the first source runs dry
    assert out["pipeline"]["by_source"] and out["pipeline"]["skipped"] == {}
    for side in ("naive", "pipeline"):
        for span in ("end_to_end", "steady"):
            assert out[side][span]["seconds"] >= 0
    for which in ("steady", "end_to_end"):
        assert set(out["ratios"][which]) == {"samples_per_s", "tokens_per_s", "images_per_s"}
        for rate, r in out["ratios"][which].items():  # pipeline over naive, from the two measured sides
            assert r == pytest.approx(out["pipeline"][which][rate] / out["naive"][which][rate])

    packing = out["packing"]
    for key in ("packed", "padded", "pipeline"):
        assert 0 < packing[key] <= 1
    assert packing["seq_len"] == 2048 and packing["pad_batch"] == 8
    assert set(packing["by_source"]) == {"photo_pairs", "photo_docs"}

    machine = out["machine"]
    assert machine["cpu_count"] >= 1 and machine["ray"] and machine["torch"]
    assert "steady state" in report.table()
    # The verdict fires: an unreachable packing floor fails the same report.
    from vilaray.bench.data import check

    assert any("efficiency" in f for f in check(dataclasses.replace(cfg, min_packing=1.01), report))


def test_train_benchmark_times_deepspeed_against_plain_loops(ray_session, bench_root, capsys):
    """The harness on the CPU-sized shape: every variant x packing measured, ratios and FLOPs filled in."""
    from vilaray.bench import BENCHMARKS
    from vilaray.bench.train import TrainBenchConfig

    cfg = TrainBenchConfig(
        shape="tiny", rows=2, seq_len=128, steps=2, warmup=1, zero_stages="2", lengths_root=str(bench_root)
    )
    report = BENCHMARKS.get("train").run(cfg)
    out = json.loads(json.dumps(report.to_dict()))
    variants = {(r["variant"], r["packing"]) for r in out["results"]}
    assert variants == {
        (v, p) for v in ("plain fp32", "plain pure-bf16", "ray-train deepspeed zero2") for p in (True, False)
    }
    by = {(r["variant"], r["packing"]): r for r in out["results"]}
    for r in out["results"]:
        assert r["step_s"] > 0 and r["tokens_per_s"] == 2 * 128 / r["step_s"]
        assert math.isfinite(r["final_loss"]) and r["tflops"] > 0
        # Ratios against the plain loops on the same rows (fp32 on a CPU), from the measured step times.
        base, pure = by[("plain fp32", r["packing"])], by[("plain pure-bf16", r["packing"])]
        assert r["vs_plain_same_precision"] == pytest.approx(base["step_s"] / r["step_s"])
        assert r["vs_plain_pure_bf16"] == pytest.approx(pure["step_s"] / r["step_s"])
    # Every variant trained the same rows from the same weights: their first steps agree.
    losses = [r["final_loss"] for r in out["results"] if "bf16" not in r["variant"] and r["packing"]]
    assert max(losses) - min(losses) < 0.05, losses
    # Packed rows hold several documents, so their attention term (and FLOPs) is below the unpacked rows'.
    on, off = by[("plain fp32", True)], by[("plain fp32", False)]
    assert on["tflops"] * on["step_s"] < off["tflops"] * off["step_s"]
    assert "MFU" in out["formula"] and "deepspeed zero2" in report.table()
    # A console line per variant as it is measured, in the order they ran (DeepSpeed first).
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[train] ")]
    assert [line.split(":")[0] for line in progress] == [
        f"[train] {v}, packing {p}"
        for v in ("ray-train deepspeed zero2", "plain fp32", "plain pure-bf16")
        for p in ("on", "off")
    ], progress
    # The GPU verdict fires on these ratios once the floor is out of reach.
    from vilaray.bench.train import floor_failures

    assert len(floor_failures(report.ratios(), floor=1e9)) == 2 and not floor_failures(report.ratios(), 0.0)


def test_eval_benchmark_compares_batched_ray_data_with_one_at_a_time(ray_session, bench_root):
    from vilaray.bench import BENCHMARKS
    from vilaray.bench.evals import EvalBenchConfig

    report = BENCHMARKS.get("eval").run(
        EvalBenchConfig(root=str(bench_root), limit=3, shots="0,2", batch_size=4)
    )
    out = report.to_dict()
    assert out["one_at_a_time"]["items"] == out["ray_batched"]["items"] == 3 * 3 * 2
    assert out["one_at_a_time"]["items_per_s"] > 0 and out["ray_batched"]["items_per_s"] > 0
    assert 0.9 <= out["agreement"] <= 1.0  # greedy: batching changes (almost) nothing
    ray, one = out["ray_batched"], out["one_at_a_time"]
    assert out["ratio"] == pytest.approx(ray["items_per_s"] / one["items_per_s"])
    assert one["items_per_s"] == pytest.approx(one["items"] / one["seconds"])
    from vilaray.bench.evals import check

    assert check(report, floor=1e9) and not check(report, floor=0.0)
    assert "prompts/s" in report.table()


def test_attention_benchmark_compares_packed_sdpa_with_masked_sdpa(bench_root, capsys):
    """In one process: both implementations on the same packed and unpacked rows, with the same losses.
    packed_sdpa's speed against sdpa's is the benchmark's verdict (its floor), not this test's: a test
    that timed it would fail on a busy machine."""
    from vilaray.bench import BENCHMARKS
    from vilaray.bench.attention import AttentionBenchConfig

    report_cfg = AttentionBenchConfig(steps=3, warmup=1, lengths_root=str(bench_root))
    report = BENCHMARKS.get("attention").run(report_cfg)
    out = json.loads(json.dumps(report.to_dict()))
    assert {(r["variant"], r["packing"]) for r in out["results"]} == {
        (a, p) for a in ("sdpa", "packed_sdpa") for p in (True, False)
    }
    for r in out["results"]:
        assert r["step_s"] > 0 and math.isfinite(r["final_loss"]) and r["vs_baseline"] > 0
    assert set(out["loss_diff"]) == {
        f"{a} packing {p}" for a in ("sdpa", "packed_sdpa") for p in ("on", "off")
    }
    assert all(d <= 1e-4 for d in out["loss_diff"].values()), report.table()
    by = {(r["variant"], r["packing"]): r for r in out["results"]}
    for (_, packing), r in by.items():
        assert r["vs_baseline"] == pytest.approx(by[("sdpa", packing)]["step_s"] / r["step_s"])
    # Its checks fire: on an unreachable speed floor, and on every loss comparison at a negative tolerance.
    from vilaray.bench.attention import check

    assert any("below" in f for f in check(dataclasses.replace(report_cfg, floor=1e9), report))
    assert len(check(dataclasses.replace(report_cfg, loss_tolerance=-1.0, floor=0.0), report)) == 4
    assert "packed_sdpa" in report.table()
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[attention] ")]
    assert len(progress) == 4 and all("s/step" in line for line in progress), progress


def test_lm_head_benchmark_compares_loss_positions_with_full_logits(bench_root):
    """In one process: the LM head on the loss positions only and on every position, same rows, same
    losses; the prompt masking the benchmark applies is what leaves positions without loss."""
    from vilaray.bench import BENCHMARKS
    from vilaray.bench.lm_head import LMHeadBenchConfig, check, prompt_labels

    report_cfg = LMHeadBenchConfig(steps=2, warmup=1, packing="on", lengths_root=str(bench_root))
    report = BENCHMARKS.get("lm-head").run(report_cfg)
    out = json.loads(json.dumps(report.to_dict()))
    assert [r["variant"] for r in out["results"]] == ["full logits", "loss positions"]
    full, selective = out["results"]
    assert selective["vs_baseline"] == pytest.approx(full["step_s"] / selective["step_s"])
    assert all(d <= 1e-4 for d in out["loss_diff"].values()), report.table()
    assert any("below" in f for f in check(dataclasses.replace(report_cfg, floor=1e9), report))
    assert len(check(dataclasses.replace(report_cfg, loss_tolerance=-1.0, floor=0.0), report)) == 2
    # Two documents of 10 tokens in a row: the first 6 of each lose their loss at share 0.6.
    pos = torch.tensor([list(range(10)) * 2])
    masked = prompt_labels({"labels": torch.arange(20)[None], "position_ids": pos}, 0.6)
    assert masked[0].tolist() == [-100] * 6 + list(range(6, 10)) + [-100] * 6 + list(range(16, 20))
    with pytest.raises(ValueError, match="--prompt-share"):
        BENCHMARKS.get("lm-head").run(dataclasses.replace(report_cfg, prompt_share=1.0))


def test_serve_benchmark_measures_overhead_and_batching(ray_session, bench_root):
    """Both sides of both comparisons on the same prompts in one run: one-token replies in process and
    through Serve + the `openai` client, and streamed replies at concurrency 1 and 8 with batching on and
    off. The goals (overhead, scaling) are the benchmark's verdict, not this test's."""
    from vilaray.bench import BENCHMARKS
    from vilaray.bench.serve import OFF, ON, ServeBenchConfig, check

    cfg = ServeBenchConfig(root=str(bench_root), latency_requests=4, requests=8, concurrency="8",
                           max_tokens=6, replica_cpus=0.25)  # fmt: skip
    # Replicas the session's Ray (no GPU) cannot hold are refused before anything is measured.
    with pytest.raises(ValueError, match="--replica-gpus 0.5: two sides need 1 GPUs"):
        BENCHMARKS.get("serve").run(dataclasses.replace(cfg, replica_gpus=0.5))
    report = BENCHMARKS.get("serve").run(cfg)
    out = json.loads(json.dumps(report.to_dict()))
    assert out["in_process"]["n"] == out["served"]["n"] == 4
    assert out["overhead_ms"] == pytest.approx(out["served"]["p50_ms"] - out["in_process"]["p50_ms"])
    assert {(x["side"], x["concurrency"]) for x in out["levels"]} == {
        (s, c) for s in (ON, OFF) for c in (1, 8)
    }
    for x in out["levels"]:
        assert (
            8 <= x["tokens"] <= 8 * 6
            and x["ttft"]["n"] == 8
            and 0 < x["ttft"]["p50_ms"] <= x["ttft"]["p99_ms"]
        )
        assert x["tokens_per_s"] == pytest.approx(x["tokens"] / x["seconds"])
    assert out["scaling"][ON]["1"] == 1.0 and out["batching_gain"]["8"] == pytest.approx(
        report.level(ON, 8).tokens_per_s / report.level(OFF, 8).tokens_per_s
    )
    strict = ServeBenchConfig(max_overhead_ms=-1e9, min_scaling=1e9)
    lax = ServeBenchConfig(max_overhead_ms=1e9, min_scaling=0.0)
    assert len(check(strict, report)) == 2 and not check(lax, report)
    assert "tokens/s" in report.table() and "overhead" in report.table()


def test_tune_benchmark_overhead_comes_from_both_measured_sides_and_its_checks_fire():
    """The tune benchmark's arithmetic and verdicts on given timings (its real run is two sweeps' worth of
    training, run by `jobs/benchmark.py tune`, not the suite)."""
    from vilaray.bench.tune import TuneBenchConfig, TuneBenchReport, bench_space, check

    cfg = TuneBenchConfig(trials=2)
    ok = TuneBenchReport(dataclasses.asdict(cfg), [10.0, 12.0], 24.2, 2)
    assert ok.overhead == pytest.approx(0.1) and check(cfg, ok) == []
    assert ok.trials_per_hour() == pytest.approx({"back_to_back": 3600 * 2 / 22, "sweep": 3600 * 2 / 24.2})
    slow = TuneBenchReport(dataclasses.asdict(cfg), [10.0, 12.0], 30.0, 1)
    failures = check(cfg, slow)
    assert len(failures) == 2 and "1 of 2 trials" in failures[0] and "36.4% > 15%" in failures[1]
    slow.failures = failures
    assert ok.table().endswith("PASS") and "FAIL: the sweep completed 1 of 2 trials" in slow.table()
    # Both sides train the same cell: N copies of one mixture, the sweep run to the end (FIFO).
    space = bench_space(TuneBenchConfig(trials=3), start_from=Path("/x"))
    assert space["mix"]["pretrain"]["points"] == [space["mix"]["pretrain"]["points"][0]] * 3
    assert space["scheduler"] == {"name": "fifo"}


def test_stage_data_benchmark_times_the_capped_mixture_against_the_uncapped(
    ray_session, world_dir, assets_dir
):
    """A 2-step, one-worker align stage of the tiny recipe (one source: the harness, not the figures) on the
    session's world: both sides read the same 4 rows in the same order, the ratios come from the two
    measured sides, and the verdict fires on rows that differ."""
    from vilaray.bench import BENCHMARKS
    from vilaray.bench.stage_data import StageDataBenchConfig, check

    cfg = StageDataBenchConfig(
        stage="align", world=str(world_dir), assets=str(assets_dir), steps=2, workers=1, reps=1, warmup=False
    )
    report = BENCHMARKS.get("stage-data").run(cfg)
    out = json.loads(json.dumps(report.to_dict()))
    assert out["rows"] == 4 and out["same_rows"] and out["failures"] == []
    assert [r["side"] for r in out["runs"]] == ["capped", "uncapped"]
    for what in ("seconds", "cpu_seconds"):
        sides = out["means"]
        assert sides["uncapped"][what] > 0 and sides["capped"][what] > 0
        assert out["ratios"][what] == pytest.approx(sides["uncapped"][what] / sides["capped"][what])
    assert "same rows in the same order: yes" in report.table()
    assert check(dataclasses.replace(report, same_rows=False))
    # Bad options fail before any work, naming the flag.
    with pytest.raises(ValueError, match="--reps"):
        BENCHMARKS.get("stage-data").run(dataclasses.replace(cfg, reps=0))
    with pytest.raises(ValueError, match="--stage: 'nope'"):
        BENCHMARKS.get("stage-data").run(dataclasses.replace(cfg, stage="nope", steps=0, workers=0))
