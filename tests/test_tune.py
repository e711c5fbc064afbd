"""`jobs/tune.py` on the session's Ray: a real ASHA sweep whose trials are the stage runner's Train V2 runs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_RECIPE, as_flags, user_shell_env
from vilaray.tune.results import NOT_ENDED

pytestmark = pytest.mark.slow

# ASHA's rungs at 2 and 4 steps, validated every 2 steps (report_every defaults to the first rung).
STEPS, RUNG = 6, 2
# The first trial learns, the second barely moves (stopped at the rung); each later one runs after a
# resume, first in a fresh bracket, so to the end: the third a slow learner, the fourth a fast one that loses
# its train worker on the way.
LRS = [2e-3, 1e-7, 1e-6, 1.5e-3]
# The fourth trial's worker is SIGKILLed before this step; checkpoints every 4 steps (sweep_flags).
DRILL_TRIAL, DRILL_STEP = 3, 6


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


@dataclass
class Smoke:
    out: Path  # <run_root>/smoke
    finished: dict  # trial id -> fingerprint of its metrics, for the trials that ended before the SIGKILL
    console: str  # the last --resume's
    ctrl_c: dict  # after the Ctrl-C: the job's exit status, console, results.json trials


@pytest.fixture(scope="module")
def smoke(world_dir, assets_dir, tmp_path_factory) -> Smoke:
    """`jobs/tune.py` in a process of its own: four trials over a two-source pretraining mix in grid mode
    (each source's tokenizer actor and block tasks are processes every trial starts), the learning rate the
    varied cell, one trial at a time. The first trial learns (2e-3); the second barely
    moves (1e-7), so at ASHA's first rung (step 2) it is worse than the median of those recorded and is
    stopped: an early stop that does not depend on luck. Then Ctrl-C (SIGINT to the driver) stops the sweep.
    `--resume` starts a fresh ASHA bracket (Ray does not save the rungs), so although the third learns slowly
    too (1e-6) it runs to the end; once it has, the driver is SIGKILLed. A second `--resume` finishes the
    sweep without running the three ended trials again: the fourth (1.5e-3) loses its train worker to a
    SIGKILL mid-trial (`--drill-sigkill`), and Ray Train resumes it from its checkpoint inside the trial."""
    root = tmp_path_factory.mktemp("tune")
    space = yaml.safe_load((ROOT / "jobs/recipes/tune/smoke.yaml").read_text())
    space |= {
        "mode": "grid",
        "budget_steps": STEPS,
        "mix": {"pretrain": {"points": [{"pairs": 3, "text": 1}]}},
        "freeze": {"pretrain": ["full"]},
        "params": {"stages.pretrain.train.lr": {"choice": LRS}},
        "scheduler": {"name": "asha", "grace_steps": RUNG, "reduction_factor": 2},
    }
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    # --start-from replaces the space's (the demo's align export) with the session's model.
    argv = [sys.executable, "jobs/tune.py", "--recipe", str(TINY_RECIPE), "--space", str(root / "space.yaml"),
            "--name", "smoke", "--start-from", str(assets_dir), *sweep_flags(world_dir, assets_dir, root),
            "--drill-sigkill", f"{DRILL_TRIAL}:{DRILL_STEP}"]  # fmt: skip
    out = root / "smoke"
    # No wait before the Ctrl-C: Tune saves its state once more before it stops (its trials' ends included).
    first = start_until_ended(argv, root / "interrupted.log", out, 2, settle=0.0)
    os.kill(first.pid, signal.SIGINT)  # Ctrl-C, to the driver only (its local Ray runs in its own session)
    ctrl_c = {"returncode": first.wait(timeout=300), "console": (root / "interrupted.log").read_text()}
    ctrl_c["trials"] = json.loads((out / "results.json").read_text())["trials"]
    # Before the SIGKILL: Tune saves the trial's end in its own state on its next loop step.
    second = start_until_ended([*argv, "--resume"], root / "killed.log", out, 3)
    os.killpg(second.pid, signal.SIGKILL)
    second.wait()
    finished = {t["trial_id"]: fingerprint(out, t["trial_id"]) for t in ended_trials(out)}
    resumed = subprocess.run([*argv, "--resume"], cwd=ROOT, env=user_shell_env(), capture_output=True, text=True,
                             timeout=1200)  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-6000:]
    return Smoke(out, finished, resumed.stdout, ctrl_c)


def ended_trials(out: Path) -> list[dict]:
    path = out / "results.json"  # replaced whole by the job, never half-written
    trials = json.loads(path.read_text())["trials"] if path.is_file() else []
    return [t for t in trials if not t["status"].startswith(NOT_ENDED)]


def start_until_ended(argv: list[str], log: Path, out: Path, n: int, settle: float = 2.0) -> subprocess.Popen:
    """The job started in a session of its own, returned still running once `n` trials have ended and
    `settle` seconds more have passed."""
    with log.open("w") as f:
        driver = subprocess.Popen(
            argv, cwd=ROOT, env=user_shell_env(), start_new_session=True, stdout=f, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and driver.poll() is None and len(ended_trials(out)) < n:
        time.sleep(0.25)
    time.sleep(settle)
    if driver.poll() is not None or len(ended_trials(out)) != n:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        pytest.fail(f"expected the job running with {n} trials ended:\n{log.read_text()[-4000:]}")
    return driver


def fingerprint(out: Path, trial_id: str) -> tuple:
    metrics = out / "trials" / trial_id / "pretrain" / "metrics.jsonl"
    return metrics.read_bytes(), metrics.stat().st_mtime_ns


def test_sweep_stops_a_trial_early_resumes_after_a_killed_driver_and_writes_results(smoke):
    out, finished, console = smoke.out, smoke.finished, smoke.console
    for name in ("results.json", "results.md", "results.csv", "results.png", "best.yaml"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    by_lr = {t["config"]["set/stages.pretrain.train.lr"]: t for t in results["trials"]}
    assert sorted(by_lr) == sorted(LRS) and len(results["trials"]) == 4
    assert by_lr[2e-3]["status"] == "completed" and by_lr[2e-3]["steps"] == STEPS
    assert by_lr[1e-7]["status"] == f"stopped early by ASHA at step {RUNG}" and by_lr[1e-7]["steps"] == RUNG
    # After each resume: a fresh bracket, so the slow learner (the bracket's first trial) is not stopped.
    for lr in (1e-6, 1.5e-3):
        assert by_lr[lr]["status"] == "completed" and by_lr[lr]["steps"] == STEPS, results["trials"]
    # The three trials that ended before the kill were not trained again; the last resume ran only the fourth.
    assert set(finished) == {by_lr[lr]["trial_id"] for lr in (2e-3, 1e-7, 1e-6)}
    assert all(fingerprint(out, tid) == fp for tid, fp in finished.items())
    ran = re.findall(r"^\[tune smoke\] \d/4 (\S+):", console, flags=re.M)
    assert ran == [by_lr[1.5e-3]["trial_id"]], console
    assert all(t["objective"] == t["scores"]["val_loss"] for t in results["trials"])
    best = results["best"]
    assert best == min(results["trials"], key=lambda t: t["objective"]) and best["status"] == "completed"
    assert best["config"]["set/stages.pretrain.train.lr"] in (2e-3, 1.5e-3)
    # Ended trials keep no Train checkpoints; the best trial keeps its export, the others do not.
    assert not list((out / "train").glob("*/checkpoint_*"))
    assert {p.parent.parent.name for p in (out / "trials").glob("*/pretrain/export")} == {best["trial_id"]}
    # The last run's trial ran to its end, so Tune did not kill it: its Train run exported and freed its own
    # placement group before the trial reported its last result (the job reads Ray's placement-group table).
    assert results["placement_groups_left"] == [], results["placement_groups_left"]
    assert f"stopped early by ASHA at step {RUNG}" in (out / "results.md").read_text()
    # vilaray's lines on the console, not Tune's boxes and tables; trials ended counted across resumes.
    assert "[tune smoke] 4/4 " in console
    assert not any(x in console for x in ("Trial status", "Configuration for experiment", "View detailed"))


def test_ctrl_c_stops_the_sweep_with_the_results_so_far(smoke):
    """Ctrl-C after two trials ended: the job exits 130 saying how to go on, results.json holds the two ended
    trials as they ended and no other trial as ended (Tune marks the trial it stops on the way out
    TERMINATED; `--resume` then ran it to the end, as the sweep test checks)."""
    ctrl_c = smoke.ctrl_c
    assert ctrl_c["returncode"] == 130, ctrl_c["console"][-4000:]
    assert "[tune smoke] interrupted: 2/4 trials ended; results so far in" in ctrl_c["console"]
    status = {t["config"]["set/stages.pretrain.train.lr"]: t["status"] for t in ctrl_c["trials"]}
    assert status[2e-3] == "completed" and status[1e-7] == f"stopped early by ASHA at step {RUNG}", status
    rest = [s for lr, s in status.items() if lr not in (2e-3, 1e-7)]
    assert rest and all(s == "pending" or s.startswith("interrupted at step") for s in rest), status


def test_a_worker_killed_inside_a_trial_resumes_from_the_trials_checkpoint(smoke):
    """The drilled trial's only train worker SIGKILLed itself before step 6, once Train had registered the
    step-4 checkpoint; Ray Train's FailureConfig restarted the group from it, inside the same Tune trial."""
    out = smoke.out
    trials = json.loads((out / "results.json").read_text())["trials"]
    stage = {t["trial_id"]: out / "trials" / t["trial_id"] / "pretrain" for t in trials}
    drilled = [t for t in trials if (stage[t["trial_id"]] / "faults" / "sigkilled.json").is_file()]
    assert [t["config"]["set/stages.pretrain.train.lr"] for t in drilled] == [LRS[DRILL_TRIAL]], trials
    trial, stage_dir = drilled[0], stage[drilled[0]["trial_id"]]
    killed = json.loads((stage_dir / "faults" / "sigkilled.json").read_text())
    assert killed["step"] == DRILL_STEP and killed["rank"] == 0
    assert int((stage_dir / "pids" / "rank0.pid").read_text()) != killed["pid"]  # a new worker finished
    steps = [json.loads(x)["step"] for x in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    # Steps 1-5, then from the step-4 checkpoint on: step 5 again, not step 1.
    assert steps == [*range(1, DRILL_STEP), *range(5, STEPS + 1)], steps
    assert trial["status"] == "completed" and trial["steps"] == STEPS


def test_best_recipe_is_what_the_best_trial_trained(smoke, capsys):
    """best.yaml is the shipped recipe with the best trial's settings. Loaded, it is the very recipe the best
    trial trained to its end (the trial's provenance: every field, resolved), so it trains as is;
    `jobs/pretrain.py` takes it unchanged (`--dry-run`: recipe and model shapes, no Ray)."""
    import pretrain
    from vilaray.config import load_recipe

    out = smoke.out
    best = load_recipe(out / "best.yaml")
    results = json.loads((out / "results.json").read_text())
    st = best.stages["pretrain"]
    assert st.train.lr == results["best"]["config"]["set/stages.pretrain.train.lr"]
    assert st.data.weights() == pytest.approx({"pairs": 0.75, "text": 0.25})
    assert st.train.max_steps == STEPS and list(best.stages) == ["align", "pretrain", "sft"]
    trained = out / "trials" / results["best"]["trial_id"] / "pretrain"
    assert best.model_dump(mode="json") == json.loads((trained / "provenance.json").read_text())["recipe"]
    assert results["best"]["steps"] == STEPS and (trained / "export" / "config.json").is_file()
    assert pretrain.main(["--recipe", str(out / "best.yaml"), "--stage", "pretrain", "--dry-run"]) == 0
    assert "[pretrain] zero 0, 1 workers" in capsys.readouterr().out


def test_status_prints_the_table_so_far(smoke, capsys):
    import tune as job

    out = smoke.out
    root = out.parent
    assert job.main(["--recipe", str(TINY_RECIPE), "--set", f"run_root={root}", "--status", "smoke"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Sweep results (4 trials") and "stopped early by ASHA" in printed
    assert job.main(["--recipe", str(TINY_RECIPE), "--set", f"run_root={root}", "--status", "nope"]) == 2


def test_propose_runs_the_fits_best_mixture_as_a_real_trial(
    ray_session, world_dir, assets_dir, tmp_path, capsys
):
    """`--fit NAME --propose 1` on a sweep's folder: twelve finished trials whose objective has its optimum
    at (0.2, 0.5, 0.3) (written as a sweep writes them; their scores are the fit's input), then the fit's
    best predicted mixture trained as a new trial of the same sweep through the real stage runner, 2 steps
    from the session's model, shown in the results as proposed."""
    import tune as job
    from conftest import write_quadratic_sweep
    from vilaray.config import apply_overrides
    from vilaray.tune.space import TuneSpace

    root = tmp_path / "synth"
    data = yaml.safe_load((ROOT / "jobs/recipes/tune/smoke.yaml").read_text())
    space = TuneSpace.model_validate(data | {"start_from": str(assets_dir), "budget_steps": 2})
    raw = apply_overrides(
        yaml.safe_load(TINY_RECIPE.read_text()), sweep_flags(world_dir, assets_dir, tmp_path)[1::2]
    )
    write_quadratic_sweep(root, space, raw, steps=2)
    argv = ["--recipe", str(TINY_RECIPE), "--set", f"run_root={tmp_path}", "--fit", "synth", "--propose", "1"]
    assert job.main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((root / "results.json").read_text())
    (proposed,) = [t for t in results["trials"] if t["proposed"]]
    assert proposed["status"] == "completed" and proposed["steps"] == 2, printed
    assert proposed["objective"] == proposed["scores"]["val_loss"] and proposed["objective"] > 0
    # The fit's best predicted mixture not yet run: near the optimum, and away from every sampled one.
    mix = proposed["config"]["mix/pretrain"]
    assert abs(mix["pairs"] - 0.5) < 0.15 and sum(mix.values()) == pytest.approx(1.0), mix
    sampled = [t["config"]["mix/pretrain"] for t in results["trials"] if not t["proposed"]]
    assert len(sampled) == 12 and all(sum(abs(mix[k] - m[k]) for k in mix) >= 0.05 for m in sampled)
    assert (root / "trials" / proposed["trial_id"] / "pretrain" / "metrics.jsonl").is_file()
    assert "proposed" in (root / "results.md").read_text()


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
    head = next(line for line in md.splitlines() if line.startswith("| cell |"))
    assert "shapes_vqa/0-shot | shapes_vqa/4-shot | shapes_vqa/0-shot shuffled" in head
    assert "[tune findings] 2/2 " in console


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
