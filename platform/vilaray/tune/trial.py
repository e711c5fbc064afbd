"""One Tune trial: its recipe through the stage runner, rank 0's reports reaching Tune when they carry the
objective, named after the trial so a restarted trial resumes its own Train runs; then, when the space asks,
the evaluation harness on the trial's export (its scores in the trial's last result)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from vilaray.config import Recipe, recipe_from_dict
from vilaray.train.runner import RunPaths, run_stage
from vilaray.tune.space import HarnessEval, Objective, TuneSpace, trial_recipe


@dataclass(frozen=True)
class Sweep:
    """What every trial needs (shipped to the trial actors): the recipe as loaded, the space, the sweep's
    folder."""

    name: str
    root: Path  # <run_root>/<name>, absolute
    raw: dict
    recipe: Recipe
    space: TuneSpace
    cwd: str  # the driver's: the recipe's relative paths resolve from here in every trial

    @property
    def trials_dir(self) -> Path:
        return self.root / "trials"

    @property
    def train_storage(self) -> Path:
        return self.root / "train"

    def total_steps(self) -> int:
        return self.space.budget_steps * len(self.space.stages)


def load_sweep(root: Path) -> Sweep:
    """A sweep as its folder holds it (recipe.yaml, space.yaml): for --fit / --propose after the fact."""
    if not (root / "space.yaml").is_file():
        raise FileNotFoundError(f"no sweep at {root} (no space.yaml)")
    raw = yaml.safe_load((root / "recipe.yaml").read_text())
    space = TuneSpace.model_validate(yaml.safe_load((root / "space.yaml").read_text()))
    return Sweep(root.name, root, raw, recipe_from_dict(raw), space, os.getcwd())


class ObjectiveReport(TuneReportCallback):
    """Forwards a Train report to Tune only when it carries every part of the objective (Tune checks each
    result for its metric), adding `objective`, the stage and `trial_step` (steps across the trial's stages,
    what ASHA schedules on)."""

    def __init__(self, objective: Objective, stage: str, offset: int):
        super().__init__()
        self.objective, self.stage, self.offset = objective, stage, offset

    def after_report(self, run_context, metrics, checkpoint):
        row = dict(metrics[0])
        value = self.objective.value(row)
        if value is None:
            return
        row |= {"objective": value, "stage": self.stage, "trial_step": self.offset + int(row["step"])}
        super().after_report(run_context, [row], checkpoint)


def run_trial(config: dict, sweep: Sweep) -> None:
    """Tune's function trainable: each of the space's stages with the trial's recipe, the first from the
    space's `start_from`, each next from the one before (its Train run named `<trial id>-<stage>`)."""
    # Tune starts a trial in its own folder; the recipe's relative paths (data, model, suite) are the
    # driver's, as for every other job (on a cluster, the job's working dir is the same on every node).
    if Path(sweep.cwd).is_dir():
        os.chdir(sweep.cwd)
    trial_id = tune.get_context().get_trial_id()
    recipe = trial_recipe(sweep.raw, sweep.space, config)
    paths = RunPaths(trial_id, str(sweep.train_storage), sweep.trials_dir / trial_id)
    offset, result = 0, None
    for i, stage in enumerate(sweep.space.stages):
        start = sweep.space.start_from if i == 0 else None
        result = run_stage(
            recipe,
            stage,
            paths,
            callbacks=[ObjectiveReport(sweep.space.objective, stage, offset)],
            start_from=Path(start) if start else None,
        )
        offset += recipe.stages[stage].train.max_steps
    ev = sweep.space.evaluate
    if ev is not None and result is not None and result.export is not None:
        # The trial's last result: the last stage's latest value of every metric (validation runs every few
        # steps, so the latest val_loss is carried forward), the harness's scores, and the objective.
        scores = harness_scores(result.export, ev, ev.root(recipe, sweep.space.stages))
        row = latest_metrics(result.stage_dir / "metrics.jsonl") | scores
        value = sweep.space.objective.value(row)
        if value is not None:
            tune.report(row | {"objective": value, "stage": "evaluate", "trial_step": offset})


def latest_metrics(path: Path) -> dict[str, float]:
    """Every numeric metric of a stage's metrics.jsonl at its latest value."""
    out: dict[str, float] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        out |= {k: v for k, v in json.loads(line).items() if isinstance(v, int | float)}
    return out


def harness_scores(export: Path, ev: HarnessEval, data_root: str) -> dict[str, float]:
    """The harness on one export (Ray Data inference actors, as `jobs/evaluate.py` runs it): each
    `harness/<task>/<k>-shot` with its bootstrap `.../stderr`, and `.../shuffled` for the control."""
    from vilaray.evals.harness import evaluate_model, evaluate_with_control, load_tasks
    from vilaray.evals.tasks import load_suite

    suite, base = load_suite(ev.suite, data_root)
    # The space's `limit` replaces the suite's per-task limits (sized for a demo's quick table).
    chosen = [t.model_copy(update={"limit": None}) for t in suite.tasks if not ev.tasks or t.name in ev.tasks]
    tasks = load_tasks(suite.model_copy(update={"tasks": chosen}), base, ev.limit)
    vision = [t.task.name for t in tasks if t.task.kind != "multiple_choice"]
    run = {"backend": "ray", "batch_size": ev.batch_size}
    if ev.control:
        results = evaluate_with_control(export, tasks, ev.shots, suite.seed, "trial", "shuffled", **run)
    else:
        results = (evaluate_model(export, tasks, ev.shots, suite.seed, "trial", **run),)
    out: dict[str, float] = {}
    for result, tail in zip(results, ("", "/shuffled")):
        scores = result.scores
        for key, s in scores.items():
            out[f"harness/{key}{tail}"], out[f"harness/{key}{tail}/stderr"] = s.value, s.stderr
        # VILA's summary column: the mean over the vision-language tasks at each shot count.
        for k in ev.shots if vision else []:
            out[f"harness/vl_avg/{k}-shot{tail}"] = sum(scores[f"{t}/{k}-shot"].value for t in vision) / len(
                vision
            )
    return out
