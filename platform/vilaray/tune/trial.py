"""One Tune trial: its recipe through the stage runner, rank 0's reports reaching Tune when they carry the
objective, named after the trial so a restarted trial resumes its own Train runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from vilaray.config import Recipe, recipe_from_dict
from vilaray.train.runner import RunPaths, run_stage
from vilaray.tune.space import Objective, TuneSpace, trial_recipe


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
    offset = 0
    for i, stage in enumerate(sweep.space.stages):
        start = sweep.space.start_from if i == 0 else None
        run_stage(
            recipe,
            stage,
            paths,
            callbacks=[ObjectiveReport(sweep.space.objective, stage, offset)],
            start_from=Path(start) if start else None,
        )
        offset += recipe.stages[stage].train.max_steps
