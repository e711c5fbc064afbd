"""A sweep end to end: Tune over the trial function (fresh, restored, or the regression's proposals), one line
per finished trial, the results rewritten as trials finish, finished trials' checkpoints dropped, the fit."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from vilaray.tune.concurrency import max_concurrent_trials, real_resources, trial_needs
from vilaray.tune.regression import fit_mixture
from vilaray.tune.results import TrialRow, ranked, trial_row, write_results
from vilaray.tune.space import trial_recipe
from vilaray.tune.trial import Sweep, run_trial

# The trial function only drives (its Train workers and Ray Data actors hold the real resources); Tune
# refuses an empty resource request, so it gets a sliver.
TRIAL_DRIVER_CPUS = 0.1
MIN_FIT_TRIALS = 8  # a sweep with at least this many finished trials ends with a mixture fit


def load_rows(root: Path) -> dict[str, TrialRow]:
    """The rows results.json holds (every trial so far, across resumes and proposal runs)."""
    path = root / "results.json"
    if not path.is_file():
        return {}
    return {r["trial_id"]: TrialRow(**r) for r in json.loads(path.read_text())["trials"]}


class SweepProgress(tune.Callback):
    """Runs in the Tune driver: after each trial ends, rewrite the results, print one line, drop the
    trial's Train checkpoints (its export stays until the sweep ends)."""

    def __init__(self, sweep: Sweep, planned: int, proposed: bool = False):
        self.sweep, self.planned, self.proposed = sweep, planned, proposed
        self.setup()

    def setup(self, **info):
        """At the start of every run of the sweep: a resumed sweep runs the callback Tune pickled with the
        first run (not the one `tuner` returns), so its clock and counts start here."""
        self.t0 = time.monotonic()
        self.ended: set[str] = set()

    def rows(self, trials, ended=None, status: str | None = None) -> dict[str, TrialRow]:
        rows = load_rows(self.sweep.root)
        for t in trials:
            row = trial_row(t, self.sweep.total_steps(), status if t is ended else None)
            row.proposed = row.proposed or self.proposed
            rows[t.trial_id] = row
        return rows

    def _ended(self, trials, trial, status: str) -> None:
        self.ended.add(trial.trial_id)
        rows = self.rows(trials, trial, status)
        space = self.sweep.space
        write_results(self.sweep.root, list(rows.values()), space, self.sweep.raw)
        drop_checkpoints(self.sweep, trial.trial_id)
        row, best = rows[trial.trial_id], ranked(list(rows.values()), space.objective.mode)
        done = sum(rows[t.trial_id].ended for t in trials)  # this experiment's, across resumes
        eta = (time.monotonic() - self.t0) / len(self.ended) * (self.planned - done)
        score = f"{space.objective.name} {row.objective:.4f}" if row.objective is not None else "no result"
        lead = f"best {best[0].objective:.4f} ({best[0].trial_id})" if best else "no best yet"
        print(
            f"[tune {self.sweep.name}] {done}/{self.planned} {trial.trial_id}: {row.status}, {score}; "
            f"{lead}; ETA {eta / 60:.1f} min",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trials, trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trials, trial, "ERROR")

    def on_experiment_end(self, trials, **info):
        """Every trial's final status once the sweep is over. After a Ctrl-C Tune marks the trials it stops
        on its way out TERMINATED, as if they had ended (its saved state, taken before, still has them
        running, so `--resume` runs them again): a trial that did not end in this run or an earlier one is
        recorded as interrupted, not as completed or stopped early."""
        before = load_rows(self.sweep.root)
        rows = self.rows(trials)
        for t in trials:
            row = rows[t.trial_id]
            if t.trial_id in self.ended or (t.trial_id in before and before[t.trial_id].ended):
                continue
            if row.status != "pending":
                row.status = f"interrupted at step {row.steps}"
        write_results(self.sweep.root, list(rows.values()), self.sweep.space, self.sweep.raw)


def drop_checkpoints(sweep: Sweep, trial_id: str) -> None:
    """A trial that ended needs no Train checkpoints: it resumes nothing, and its export (if it finished)
    is what a later stage or a person reads. The whole Train run folder goes (its snapshot names the
    checkpoints): a trial Tune runs again anyway (a driver killed before Tune saved the trial's end) then
    starts afresh instead of failing on checkpoints that are gone."""
    for stage in sweep.space.stages:
        shutil.rmtree(sweep.train_storage / f"{trial_id}-{stage}", ignore_errors=True)


def scheduler(sweep: Sweep):
    s = sweep.space.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="trial_step",
        max_t=sweep.total_steps(),
        grace_period=s.grace_steps,
        reduction_factor=s.reduction_factor,
    )


def concurrency(sweep: Sweep) -> int:
    """Trials at once: one trial's needs (its example recipe) against the machine's real resources."""
    example = trial_recipe(sweep.raw, sweep.space, sweep.space.example(sweep.recipe))
    needs = trial_needs(
        example, sweep.space.stages, driver_cpus=TRIAL_DRIVER_CPUS, evaluates=sweep.space.evaluate is not None
    )
    return max_concurrent_trials(real_resources(), needs)


def tuner(
    sweep: Sweep, param_space: dict, num_samples: int, name: str, proposed: bool = False, resume: bool = False
):
    """A fresh Tuner (or the restored one when `resume`): the trial function at a sliver of a CPU, trials at
    once from the real machine."""
    # Tune saves the sweep's state (which trials ended) every 10 s or more by default; a driver killed in
    # between would run trials again on --resume. Trials take minutes: save on every step of the loop.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # Tune's newer console output prints its experiment box and paths whatever the verbosity; the older
    # reporter at verbosity 0 prints nothing. The sweep prints its own lines (SweepProgress).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep), {"CPU": TRIAL_DRIVER_CPUS})
    planned = grid_size(param_space) * num_samples
    progress = SweepProgress(sweep, planned, proposed)
    path = sweep.root / name
    if resume:
        if not tune.Tuner.can_restore(str(path)):
            raise FileNotFoundError(f"no sweep to resume at {path}")
        return tune.Tuner.restore(
            str(path), trainable, resume_errored=True, param_space=param_space
        ), progress
    return (
        tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric="objective",
                mode=sweep.space.objective.mode,
                # Proposals run to the end: they are compared with the best sampled trials.
                scheduler=FIFOScheduler() if proposed else scheduler(sweep),
                num_samples=num_samples,
                max_concurrent_trials=concurrency(sweep),
                # A trial's process (its imports, Ray Data and Train clients) is kept for the next trial
                # where every trial runs to its end. Not under ASHA: a trial it stops is still inside
                # TorchTrainer.fit, and Tune errors the next trial when the actor cannot be reset.
                reuse_actors=proposed or sweep.space.scheduler.name == "fifo",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(sweep.root),
                failure_config=tune.FailureConfig(max_failures=1),
                callbacks=[progress],
                verbose=0,
            ),
        ),
        progress,
    )


def grid_size(param_space: dict) -> int:
    """Trials per sample: the product of the space's grid lengths."""
    n = 1
    for value in param_space.values():
        if isinstance(value, dict) and "grid_search" in value:
            n *= len(value["grid_search"])
    return n


def fit_rows(rows: list[TrialRow], mode: str) -> dict | None:
    """The mixture regression over the trials that ran their whole budget (an early-stopped trial's
    objective is from fewer steps) with a one-stage mixture, or None if too few."""
    usable = [r for r in rows if r.status == "completed" and sum(k.startswith("mix/") for k in r.config) == 1]
    if len(usable) < MIN_FIT_TRIALS:
        return None
    key = next(k for k in usable[0].config if k.startswith("mix/"))
    fit = fit_mixture([r.config[key] for r in usable], [r.objective for r in usable], mode)
    return {"stage": key.split("/", 1)[1], "trials": fit.n_trials, "family": fit.family,
            "heldout_spearman": fit.heldout_spearman, "best_predicted": fit.best(), "model": fit}  # fmt: skip


def finish(sweep: Sweep, propose: int, keep_exports: bool, groups_before: set[str] | None = None) -> None:
    """After the trials: the mixture fit (with enough finished trials), the `propose` best predicted
    mixtures as new trials (the best sampled trial's other settings, run to the end), the exports dropped
    but the best trial's unless `keep_exports`."""
    space = sweep.space
    rows = list(load_rows(sweep.root).values())
    fit = fit_rows(rows, space.objective.mode)
    if fit is None:
        print(
            f"[tune {sweep.name}] mixture fit: needs {MIN_FIT_TRIALS} completed trials with a one-stage mix",
            flush=True,
        )
    else:
        print(
            f"[tune {sweep.name}] mixture fit over {fit['trials']} trials ({fit['family']} features): held-out Spearman "
            f"{fit['heldout_spearman']:.3f}; best predicted {fit['best_predicted']}",
            flush=True,
        )
        if fit["heldout_spearman"] < 0.5:
            print(
                f"[tune {sweep.name}] the fit does not rank unseen trials (held-out Spearman below 0.5): its "
                f"best predicted mixture is a guess; more trials or a stronger signal are needed",
                flush=True,
            )
        if propose:
            best = ranked(rows, space.objective.mode)[0]
            model = fit["model"]
            tried = [
                [r.config[f"mix/{fit['stage']}"].get(s, 0.0) for s in model.sources]
                for r in rows
                if r.finished
            ]
            mixes = model.propose(propose, seed=space.seed, avoid=tried)
            fixed = {k: v for k, v in best.config.items() if not k.startswith("mix/")}
            param_space = fixed | {
                "mixes": tune.grid_search([{fit["stage"]: m} for m in mixes]),
                "proposed": True,
            }
            t, _ = tuner(sweep, param_space, 1, "proposed", proposed=True)
            t.fit()
            rows = list(load_rows(sweep.root).values())
    summary = {k: v for k, v in (fit or {}).items() if k != "model"} or None
    write_results(sweep.root, rows, space, sweep.raw, summary)
    if groups_before is not None:
        left = placement_groups_left(groups_before)
        results = json.loads((sweep.root / "results.json").read_text())
        (sweep.root / "results.json").write_text(
            json.dumps(results | {"placement_groups_left": left}, indent=2)
        )
        if left:
            print(
                f"[tune {sweep.name}] warning: {len(left)} placement groups of the sweep still held: {left}"
            )
    best = ranked(rows, space.objective.mode)
    if not keep_exports:
        drop_exports(sweep.root, {best[0].trial_id} if best else set())


def drop_exports(root: Path, keep: set[str]) -> None:
    for trial_dir in (root / "trials").glob("*"):
        if trial_dir.name not in keep:
            for export in trial_dir.glob("*/export"):
                shutil.rmtree(export, ignore_errors=True)


def placement_groups_left(before: set[str], wait_s: float = 30.0) -> list[str]:
    """Placement groups created since `before` and not removed, after up to `wait_s` for Ray to finish
    removing them (a stopped trial's Train placement group goes through Train's cleaner)."""
    from ray.util import placement_group_table

    deadline = time.monotonic() + wait_s
    while True:
        left = sorted(
            pid
            for pid, pg in placement_group_table().items()
            if pid not in before and pg["state"] != "REMOVED"
        )
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)
