"""`jobs/tune.py` on the session's Ray: a real ASHA sweep whose trials are the stage runner's Train V2 runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_RECIPE, as_flags

pytestmark = pytest.mark.slow

# ASHA's rungs at 2 and 4 steps, validated every 2 steps (report_every defaults to the first rung).
STEPS, RUNG = 8, 2
# The first trial learns, the second barely moves (stopped at the rung), the third runs after the resume.
LRS = [2e-3, 1e-7, 1e-6]


def sweep_flags(world: Path, assets: Path, run_root: Path) -> list[str]:
    """The shipped tiny recipe shrunk for a sweep on 2 cores: one train worker, held-out loss at every rung."""
    return as_flags(
        [
            f"model.path={assets}",
            f"defaults.data.root={world}",
            f"stages.sft.evaluation.data_root={world}",
            f"run_root={run_root}",
            "defaults.train.num_workers=1",
            "defaults.train.zero_stage=0",
            "defaults.train.warmup_steps=1",
            "defaults.train.checkpoint_every=4",
            "defaults.validation.rows_per_source=2",
        ]
    )


def run_env() -> dict:
    """A user's shell: the job starts its own local Ray (with the dashboard, as a sweep's Ray does)."""
    session_only = (
        "RAY_ADDRESS",
        "RAY_worker_maximum_startup_concurrency",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
    )
    return {k: v for k, v in os.environ.items() if k not in session_only}


@pytest.fixture(scope="module")
def smoke(world_dir, assets_dir, tmp_path_factory):
    """`jobs/tune.py` in a process of its own: three trials over a three-source pretraining mix in grid mode,
    the learning rate the varied cell. The first trial learns (2e-3); the second barely moves (1e-7), so at
    ASHA's first rung (step 2) it is worse than the median of those recorded and is stopped: an early stop that
    does not depend on luck. Once it has been stopped the driver is SIGKILLed, and `--resume` finishes the
    sweep: the two finished trials are not run again, and the third starts a fresh ASHA bracket (Ray does
    not save the rungs), so although it learns slowly too (1e-6) it runs to the end."""
    root = tmp_path_factory.mktemp("tune")
    space = yaml.safe_load((ROOT / "jobs/recipes/tune/smoke.yaml").read_text())
    space |= {
        "mode": "grid",
        "budget_steps": STEPS,
        "mix": {"pretrain": {"points": [{"interleaved": 1, "pairs": 2, "text": 1}]}},
        "freeze": {"pretrain": ["full"]},
        "params": {"stages.pretrain.train.lr": {"choice": LRS}},
        "scheduler": {"name": "asha", "grace_steps": RUNG, "reduction_factor": 2},
    }
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    # --start-from replaces the space's (the demo's align export) with the session's model.
    argv = [sys.executable, "jobs/tune.py", "--recipe", str(TINY_RECIPE), "--space", str(root / "space.yaml"),
            "--name", "smoke", "--start-from", str(assets_dir), *sweep_flags(world_dir, assets_dir, root)]  # fmt: skip
    out = root / "smoke"
    with (root / "killed.log").open("w") as log:
        driver = subprocess.Popen(
            argv, cwd=ROOT, env=run_env(), start_new_session=True, stdout=log, stderr=log
        )
        deadline, ended = time.monotonic() + 900, []
        while time.monotonic() < deadline and driver.poll() is None:
            time.sleep(1)
            if (out / "results.json").is_file():
                ended = [t for t in json.loads((out / "results.json").read_text())["trials"] if t["steps"]]
                if any(t["status"].startswith("stopped early") for t in ended):
                    time.sleep(2)  # Tune records the trial's end in its own state on its next loop step
                    break
        alive = driver.poll() is None
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert alive and len(ended) == 2, (root / "killed.log").read_text()[-4000:]
    finished = {t["trial_id"]: fingerprint(out, t["trial_id"]) for t in ended}
    resumed = subprocess.run([*argv, "--resume"], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                             timeout=1200)  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-6000:]
    return out, finished, resumed.stdout


def fingerprint(out: Path, trial_id: str) -> tuple:
    metrics = out / "trials" / trial_id / "pretrain" / "metrics.jsonl"
    return metrics.read_bytes(), metrics.stat().st_mtime_ns


def test_sweep_stops_a_trial_early_resumes_after_a_killed_driver_and_writes_results(smoke):
    out, finished, console = smoke
    for name in ("results.json", "results.md", "results.csv", "results.png", "best.yaml"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    by_lr = {t["config"]["set/stages.pretrain.train.lr"]: t for t in results["trials"]}
    assert sorted(by_lr) == sorted(LRS) and len(results["trials"]) == 3
    assert by_lr[2e-3]["status"] == "completed" and by_lr[2e-3]["steps"] == STEPS
    assert by_lr[1e-7]["status"] == f"stopped early by ASHA at step {RUNG}" and by_lr[1e-7]["steps"] == RUNG
    # After the resume: a fresh bracket, so the next slow learner (the bracket's first trial) is not stopped.
    assert by_lr[1e-6]["status"] == "completed" and by_lr[1e-6]["steps"] == STEPS, results["trials"]
    # The two trials that ended before the kill were not trained again.
    assert set(finished) == {by_lr[2e-3]["trial_id"], by_lr[1e-7]["trial_id"]}
    assert all(fingerprint(out, tid) == fp for tid, fp in finished.items())
    ran = re.findall(r"^\[tune smoke\] \d/3 (\S+):", console, flags=re.M)
    assert len(ran) == 1 and not set(ran) & set(finished), console
    assert all(t["objective"] == t["scores"]["val_loss"] for t in results["trials"])
    best = results["best"]
    assert best == min(results["trials"], key=lambda t: t["objective"]) and best["status"] == "completed"
    assert best["config"]["set/stages.pretrain.train.lr"] == 2e-3
    # Ended trials keep no Train checkpoints; the best trial keeps its export, the others do not. The job
    # checks Ray's placement-group table after the sweep and records what is still held: not asserted
    # empty, because on a loaded box (a full suite run) two finished trials' Train groups were seen held
    # until the job ended (README: Tuning, known problems).
    assert not list((out / "train").glob("*/checkpoint_*"))
    assert {p.parent.parent.name for p in (out / "trials").glob("*/pretrain/export")} == {best["trial_id"]}
    assert "placement_groups_left" in results
    assert f"stopped early by ASHA at step {RUNG}" in (out / "results.md").read_text()
    # vilaray's lines on the console, not Tune's boxes and tables.
    assert "[tune smoke] 1/3 " in console
    assert not any(x in console for x in ("Trial status", "Configuration for experiment", "View detailed"))


def test_best_recipe_trains_as_is(ray_session, smoke, world_dir, assets_dir):
    """best.yaml is the shipped recipe with the best trial's settings; `jobs/pretrain.py` runs it (a short
    pretraining from the same starting model the sweep used)."""
    import pretrain
    from vilaray.config import load_recipe

    out, _, _ = smoke
    best = load_recipe(out / "best.yaml")
    results = json.loads((out / "results.json").read_text())
    st = best.stages["pretrain"]
    assert st.train.lr == results["best"]["config"]["set/stages.pretrain.train.lr"]
    assert st.data.weights() == pytest.approx({"interleaved": 0.25, "pairs": 0.5, "text": 0.25})
    assert st.train.max_steps == STEPS and list(best.stages) == ["align", "pretrain", "sft"]
    run_root = Path(best.run_root)
    (run_root / "best-run" / "align").mkdir(parents=True)
    (run_root / "best-run" / "align" / "export").symlink_to(assets_dir)  # the sweep's start_from
    argv = ["--recipe", str(out / "best.yaml"), "--stage", "pretrain", "--run-name", "best-run"]
    assert pretrain.main([*argv, "--set", "stages.pretrain.train.max_steps=2"]) == 0
    assert (run_root / "best-run" / "pretrain" / "export" / "config.json").is_file()


def test_status_prints_the_table_so_far(smoke, capsys):
    import tune as job

    out, _, _ = smoke
    root = out.parent
    assert job.main(["--recipe", str(TINY_RECIPE), "--set", f"run_root={root}", "--status", "smoke"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Sweep results (3 trials") and "stopped early by ASHA" in printed
    assert job.main(["--recipe", str(TINY_RECIPE), "--set", f"run_root={root}", "--status", "nope"]) == 2


@pytest.fixture(scope="module")
def findings(ray_session, world_dir, assets_dir, tmp_path_factory):
    """A miniature of `vila-findings.yaml`: two of its cells (the full recipe, the LLM frozen in
    pretraining) at one seed, each trial pretrain + SFT for a few steps, then the harness at 0 and 4 shots
    on a few samples per task with the shuffled-image control. Exports are kept to check the cells. The
    job runs through its `main` on the session's Ray (the smoke sweep runs it as a process of its own)."""
    import contextlib
    import io

    import tune as job

    root = tmp_path_factory.mktemp("findings")
    space = yaml.safe_load((ROOT / "jobs/recipes/tune/vila-findings.yaml").read_text())
    space |= {
        "budget_steps": 2,
        "seeds": [0],
        "cells": {k: space["cells"][k] for k in ("full", "llm_frozen")},
        "evaluate": space["evaluate"] | {"limit": 3, "batch_size": 8},
    }
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    argv = ["--recipe", str(TINY_RECIPE), "--space", str(root / "space.yaml"),
            "--name", "findings", "--start-from", str(assets_dir), "--keep-exports",
            *sweep_flags(world_dir, assets_dir, root),
            # The harness scores each export; no held-out loss or in-training benchmark on the way.
            "--set", "defaults.validation.every=0", "--set", "stages.sft.evaluation.every=0"]  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = job.main(argv)
    assert code == 0, (out.getvalue() + err.getvalue())[-6000:]
    return root / "findings", out.getvalue()


def lm_weights(export: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(export.glob("*.safetensors")):
        tensors |= {k: v for k, v in load_file(f).items() if "language_model" in k}
    assert tensors, export
    return tensors


def test_findings_grid_trains_each_cell_then_scores_its_export_with_the_harness(findings, assets_dir):
    out, console = findings
    results = json.loads((out / "results.json").read_text())
    trials = {t["config"]["cell"]: t for t in results["trials"]}
    assert sorted(trials) == ["full", "llm_frozen"] and all(
        t["status"] == "completed" for t in trials.values()
    )
    for t in trials.values():
        assert t["steps"] == 4  # pretrain 2 + SFT 2
        for task in ("shapes_vqa", "shapes_captions", "shapes_text_mc"):
            for k in (0, 4):
                for tail in ("", "/shuffled"):
                    assert 0 <= t["scores"][f"harness/{task}/{k}-shot{tail}"] <= 10
                    assert t["scores"][f"harness/{task}/{k}-shot{tail}/stderr"] >= 0
        vl = [t["scores"][f"harness/{task}/4-shot"] for task in ("shapes_vqa", "shapes_captions")]
        assert t["objective"] == t["scores"]["harness/vl_avg/4-shot"] == pytest.approx(sum(vl) / 2)
    # Each cell trained what it says: the LLM frozen in pretraining leaves the starting LM as it was
    # (then SFT trains it); the full recipe changes it in pretraining.
    start = lm_weights(assets_dir)
    for cell, frozen in (("llm_frozen", True), ("full", False)):
        trial = out / "trials" / trials[cell]["trial_id"]
        pretrained = lm_weights(trial / "pretrain" / "export")
        same = all(torch_equal(pretrained[k], start[k]) for k in start)
        assert same == frozen, cell
        assert not all(torch_equal(v, start[k]) for k, v in lm_weights(trial / "sft" / "export").items())
    md = (out / "results.md").read_text()
    assert "## Per cell (mean ± standard error over seeds)" in md
    assert re.search(r"^\| full \| 1 \| ", md, flags=re.M) and re.search(
        r"^\| llm_frozen \| 1 \| ", md, flags=re.M
    )
    assert "harness/shapes_vqa/4-shot/shuffled" in md.splitlines()[4]
    assert "[tune findings] 2/2 " in console


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
