"""One Tune trial: its recipe through the stage runner, rank 0's reports reaching Tune when they carry the
objective, named after the trial so a restarted trial resumes its own Train runs; then, when the space asks,
the evaluation harness on the trial's export (its scores in the trial's last result)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from vilaray.config import Recipe, recipe_from_dict
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
    # A reliability drill (`--drill-sigkill`): trial number -> the step before which its first stage's
    # last rank SIGKILLs itself, once; Ray Train restarts the group from the trial's checkpoint.
    drills: dict[int, int] = field(default_factory=dict)

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
    what ASHA schedules on). Reports from `withhold_from` on (the trial's last step) are not forwarded: Tune
    stops a trial at its last step (ASHA's `max_t`), which would kill the Train run while it exports and
    before it frees its placement group; the trial function reports that result once the stage is done."""

    def __init__(self, objective: Objective, stage: str, offset: int, withhold_from: int | None = None):
        super().__init__()
        self.objective, self.stage, self.offset, self.withhold_from = objective, stage, offset, withhold_from

    def after_report(self, run_context, metrics, checkpoint):
        row = dict(metrics[0])
        value = self.objective.value(row)
        trial_step = self.offset + int(row["step"])
        if value is None or (self.withhold_from is not None and trial_step >= self.withhold_from):
            return
        row |= {"objective": value, "stage": self.stage, "trial_step": trial_step}
        super().after_report(run_context, [row], checkpoint)


def run_trial(config: dict, sweep: Sweep) -> None:
    """Tune's function trainable: each of the space's stages with the trial's recipe, the first from the
    space's `start_from`, each next from the one before (its Train run named `<trial id>-<stage>`); then
    the trial's last result, from the finished stage (and the harness, when the space evaluates)."""
    # Imported here, in the trial's process, not at the top: every Train controller unpickles this module
    # (ObjectiveReport), and so does the sweep's driver; with the training stack (torch, DeepSpeed) at the
    # top, each controller took 3.6 s longer to start inside a sweep than back to back.
    from vilaray.train.faults import FaultPlan
    from vilaray.train.runner import RunPaths, run_stage

    # Tune starts a trial in its own folder; the recipe's relative paths (data, model, suite) are the
    # driver's, as for every other job (on a cluster, the job's working dir is the same on every node).
    if Path(sweep.cwd).is_dir():
        os.chdir(sweep.cwd)
    trial_id = tune.get_context().get_trial_id()
    recipe = wandb_grouped(trial_recipe(sweep.raw, sweep.space, config), sweep.name)
    paths = RunPaths(trial_id, str(sweep.train_storage), sweep.trials_dir / trial_id)
    offset, result, stages = 0, None, sweep.space.stages
    drill = sweep.drills.get(trial_number(trial_id))
    for i, stage in enumerate(stages):
        start = sweep.space.start_from if i == 0 else None
        steps = recipe.stages[stage].train.max_steps
        last = offset + steps if i == len(stages) - 1 else None
        result = run_stage(
            recipe,
            stage,
            paths,
            faults=FaultPlan(sigkill_at=drill) if drill and i == 0 else None,
            callbacks=[ObjectiveReport(sweep.space.objective, stage, offset, withhold_from=last)],
            start_from=Path(start) if start else None,
        )
        offset += steps
    if result is None or result.export is None:
        return
    # The last stage's latest value of every metric (validation runs every few steps, so the latest
    # val_loss is carried forward), the harness's scores, and the objective.
    row = latest_metrics(result.stage_dir / "metrics.jsonl")
    ev = sweep.space.evaluate
    if ev is not None:
        row |= harness_scores(result.export, ev, ev.root(recipe, stages))
    value = sweep.space.objective.value(row)
    if value is not None:
        stage = "evaluate" if ev is not None else stages[-1]
        tune.report(row | {"objective": value, "stage": stage, "trial_step": offset})


def wandb_grouped(recipe: Recipe, group: str) -> Recipe:
    """The recipe with every stage that logs to wandb logging into `group`: a sweep's trials side by side
    in one wandb group (each trial's stage a run named `<trial id>-<stage>`)."""
    stages = {
        name: st.model_copy(
            update={
                "train": st.train.model_copy(
                    update={"wandb": st.train.wandb.model_copy(update={"group": group})}
                )
            }
        )
        if st.train.wandb
        else st
        for name, st in recipe.stages.items()
    }
    return recipe.model_copy(update={"stages": stages})


def trial_number(trial_id: str) -> int:
    """The trial's place in the sweep, in creation order: Tune's ids are `<prefix>_<counter:05d>`, and a
    restored sweep keeps them."""
    return int(trial_id.rsplit("_", 1)[-1])


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
