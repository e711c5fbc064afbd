"""A sweep's search space (`jobs/recipes/tune/*.yaml`): typed, checked against the recipe before any trial
starts, and turned into Ray Tune's param space and each trial's recipe.

A trial's config is flat and JSON-able: `mix/<stage>` (source -> weight, a point on the simplex),
`freeze/<stage>` (a preset name), `set/<dotted.recipe.key>` (a value), `cell` (a named ablation cell's
overrides, grid mode) and `seed`. Mixtures are drawn up front from a seeded Dirichlet (or listed, in grid
mode) and handed to Tune as a grid, so a sweep's trials are the same on every run and on a resume.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vilaray.config import Recipe, RecipeError, recipe_from_dict, set_key
from vilaray.registry import Registry


class SpaceError(RecipeError):
    """A search space that cannot run: raised before any trial starts, naming the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Freezing presets by name; `lora(8)` / `tower_last_k(2)` take their parameter in parentheses. Each gives a
# stage's whole `freeze` section (VILA's choices: LLM frozen or trained in pretraining; tower in SFT).
FREEZE_PRESETS: Registry[Callable[[int | None], dict]] = Registry(
    "freeze preset",
    {
        "llm_frozen": lambda _: {"projector": {"mode": "full"}, "language_model": {"mode": "frozen"}},
        "full": lambda _: {"projector": {"mode": "full"}, "language_model": {"mode": "full"}},
        "lora": lambda r: {
            "projector": {"mode": "full"},
            "language_model": {"mode": "lora", "r": r or 16, "alpha": 2 * (r or 16)},
        },
        "tower_frozen": lambda _: {
            "vision_tower": {"mode": "frozen"},
            "projector": {"mode": "full"},
            "language_model": {"mode": "full"},
        },
        "tower_last_k": lambda k: {
            "vision_tower": {"mode": "last_k", "k": k or 1},
            "projector": {"mode": "full"},
            "language_model": {"mode": "full"},
        },
    },
)
_PRESET = re.compile(r"^(?P<name>[a-z_]+)(?:\((?P<arg>\d+)\))?$")


def freeze_preset(spec: str) -> dict:
    """`name` or `name(n)` as a freeze section; an unknown name lists the presets."""
    m = _PRESET.match(spec.strip())
    if m is None:
        raise SpaceError(f"freeze preset {spec!r}: expected name or name(n), e.g. lora(8)")
    try:
        make = FREEZE_PRESETS.get(m["name"])
    except KeyError as e:
        raise SpaceError(str(e)) from None
    return make(int(m["arg"]) if m["arg"] else None)


# Tune's samplers by the name a space file uses; `[low, high]` or, for `choice`, the options.
DISTRIBUTIONS = Registry(
    "distribution",
    {
        "choice": lambda args: ("choice", list(args)),
        "uniform": lambda args: ("uniform", _bounds(args)),
        "loguniform": lambda args: ("loguniform", _bounds(args)),
        "randint": lambda args: ("randint", _bounds(args)),
    },
)


def _bounds(args) -> list:
    if not isinstance(args, list | tuple) or len(args) != 2 or not args[0] < args[1]:
        raise ValueError(f"expected [low, high] with low < high, got {args!r}")
    return list(args)


class Mix(Strict):
    """A stage's mixture: Dirichlet draws over `sources` (all of the stage's when omitted), or listed
    points (grid mode). Weights are token shares, normalised to 1."""

    sources: list[str] | None = None
    alpha: float = Field(1.0, gt=0)  # concentration: 1 is uniform on the simplex
    points: list[dict[str, float]] | None = None

    @model_validator(mode="after")
    def _points_are_mixtures(self) -> Mix:
        for p in self.points or []:
            if not p or any(w < 0 for w in p.values()) or sum(p.values()) <= 0:
                raise ValueError(f"mix point {p}: weights must be >= 0 with a positive sum")
        return self


# Where an objective's metric comes from, by prefix: held-out loss and in-training benchmarks are reported
# during training (ASHA can stop on them); `harness/...` scores only once the trial's export is evaluated.
METRIC_PREFIXES = ("val_loss", "eval/", "harness/")
# A harness score's name: its task, shot count and whether it is the shuffled-image control.
HARNESS_SCORE = re.compile(r"^harness/(?P<task>[^/]+)/(?P<shots>\d+)-shot(?P<control>/shuffled)?$")


class Objective(Strict):
    """What Tune optimises: one metric, or a weighted sum of several (`eval/<task>/<k>-shot`, `val_loss`,
    `val_loss/<source>`, `harness/<task>/<k>-shot`)."""

    metric: str | None = None
    weights: dict[str, float] | None = None
    mode: Literal["min", "max"]

    @model_validator(mode="after")
    def _one_form(self) -> Objective:
        if (self.metric is None) == (not self.weights):
            raise ValueError("give either metric or weights (a weighted sum of metrics)")
        for name in [self.metric] if self.metric else list(self.weights):
            if not (name == "val_loss" or name.startswith(("val_loss/", "eval/", "harness/"))):
                raise ValueError(
                    f"metric {name!r}: expected val_loss, val_loss/<source>, eval/<task>/<k>-shot or "
                    f"harness/<task>/<k>-shot"
                )
        return self

    @property
    def name(self) -> str:
        return self.metric or "objective"

    def parts(self) -> list[str]:
        return [self.metric] if self.metric else list(self.weights)

    def value(self, metrics: dict) -> float | None:
        """The objective from one report's metrics, or None if the report lacks any of its parts."""
        parts = {self.metric: 1.0} if self.metric else dict(self.weights)
        if any(k not in metrics for k in parts):
            return None
        return float(sum(w * float(metrics[k]) for k, w in parts.items()))


class HarnessEval(Strict):
    """The evaluation harness on a trial's final export, after its last stage: the suite's `tasks` at
    `shots` on `limit` held-out samples each (bootstrap standard errors), optionally the shuffled-image
    control. Scores join the trial's row as `harness/<task>/<k>-shot` (and `.../shuffled`, `.../stderr`)."""

    suite: str = "evals/shapes.yaml"
    data_root: str | None = None  # None: the trial's last stage's data root (the world it trained on)
    tasks: list[str] | None = None  # None: every task of the suite
    shots: list[int] = Field(default_factory=lambda: [0, 4], min_length=1)
    limit: int = Field(100, ge=1)
    control: bool = False
    batch_size: int = Field(16, ge=1)

    def root(self, recipe: Recipe, stages: list[str]) -> str:
        return self.data_root or recipe.stages[stages[-1]].data.root

    def metrics(self, suite_tasks: list[str]) -> set[str]:
        names = [*(self.tasks or suite_tasks), "vl_avg"]
        out = {f"harness/{t}/{k}-shot" for t in names for k in self.shots}
        if self.control:
            out |= {f"{m}/shuffled" for m in out}
        return out


class Cell(Strict):
    """One named cell of an ablation grid: the overrides that make it differ from the recipe (a stage's
    mixture, a stage's freezing preset, dotted recipe keys). An empty cell is the recipe itself."""

    mix: dict[str, dict[str, float]] = Field(default_factory=dict)
    freeze: dict[str, str] = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _mixes_are_mixtures(self) -> Cell:
        for stage, p in self.mix.items():
            if not p or any(w < 0 for w in p.values()) or sum(p.values()) <= 0:
                raise ValueError(f"mix.{stage} {p}: weights must be >= 0 with a positive sum")
        return self


class Scheduler(Strict):
    name: Literal["asha", "fifo"] = "asha"
    grace_steps: int = Field(10, ge=1)  # ASHA's first rung
    reduction_factor: float = Field(2.0, gt=1)


class TuneSpace(Strict):
    """One sweep: which stages a trial trains (the first from `start_from` or the recipe's model), what
    varies, the budget, the objective and the scheduler."""

    stages: list[str] = Field(min_length=1)
    start_from: str | None = None
    mode: Literal["random", "grid"] = "random"
    num_samples: int = Field(4, ge=1)  # random mode: mixtures drawn (one trial each)
    seed: int = 0  # of the Dirichlet draws and Tune's samplers
    budget_steps: int = Field(ge=1)  # train.max_steps of every trial stage
    # Validation / benchmarks (whichever the objective reads) every this many steps, so that ASHA's rungs
    # (grace_steps x reduction_factor^k) find a result. None: ASHA's grace_steps; FIFO: the recipe's.
    report_every: int | None = Field(None, ge=1)
    mix: dict[str, Mix] = Field(default_factory=dict)
    freeze: dict[str, list[str]] = Field(default_factory=dict)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Grid mode: named one-factor cells (VILA-style ablations against the recipe), crossed with the seeds.
    cells: dict[str, Cell] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    evaluate: HarnessEval | None = None
    objective: Objective
    scheduler: Scheduler = Scheduler()

    @model_validator(mode="after")
    def _something_varies(self) -> TuneSpace:
        if not (self.mix or self.freeze or self.params or self.cells or len(self.seeds) > 1):
            raise ValueError("the space is empty: give mix, freeze, params, cells or several seeds")
        if self.mode == "grid" and any(m.points is None for m in self.mix.values()):
            raise ValueError("grid mode lists its mixtures: give mix.<stage>.points")
        if self.cells and self.mode != "grid":
            raise ValueError("cells are an ablation grid: set mode: grid")
        harness = [p for p in self.objective.parts() if p.startswith("harness/")]
        if harness and self.evaluate is None:
            raise ValueError(f"objective {harness[0]!r} is a harness score: add an `evaluate` section")
        if harness and self.scheduler.name == "asha":
            raise ValueError(
                "scheduler: ASHA stops trials on in-training results, and harness scores exist only once a "
                "trial has ended: use fifo, or an eval/... or val_loss objective"
            )
        for key, dist in self.params.items():
            if len(dist) != 1:
                raise ValueError(f"params.{key}: one distribution, e.g. {{loguniform: [1e-4, 1e-3]}}")
        return self

    # ------------------------------------------------------------------------------- checked on the recipe

    def check(self, recipe: Recipe, raw: dict) -> None:
        """Every stage, source, preset and key exists and every trial's recipe validates: fails before any
        trial starts, naming the key."""
        names = list(recipe.stages)
        for stage in self.stages:
            if stage not in recipe.stages:
                raise SpaceError(f"stages: {stage!r} is not a stage of {recipe.name!r} ({names})")
        first = names.index(self.stages[0])
        if self.stages != names[first : first + len(self.stages)]:
            raise SpaceError(f"stages: {self.stages} must follow each other in the recipe's order {names}")
        if self.start_from is not None:
            if not (Path(self.start_from) / "config.json").is_file():
                raise SpaceError(f"start_from: {self.start_from} is not an export (no config.json)")
        elif first > 0:
            raise SpaceError(
                f"start_from: stage {self.stages[0]!r} starts from stage {names[first - 1]!r}'s export: give its path"
            )
        for stage, mix in self.mix.items():
            if stage not in self.stages:
                raise SpaceError(f"mix.{stage}: not one of the sweep's stages {self.stages}")
            have = set(recipe.stages[stage].data.sources)
            named = set(mix.sources or []) | {s for p in mix.points or [] for s in p}
            if missing := sorted(named - have):
                raise SpaceError(
                    f"mix.{stage}: sources {missing} are not in stage {stage!r} ({sorted(have)})"
                )
        counts = {stage: len(self.mixtures(recipe, stage)) for stage in self.mix}
        if len(set(counts.values())) > 1:
            raise SpaceError(
                f"mix: every stage lists as many points (trial i takes point i of each): {counts}"
            )
        for stage, presets in self.freeze.items():
            if stage not in self.stages:
                raise SpaceError(f"freeze.{stage}: not one of the sweep's stages {self.stages}")
            if not presets:
                raise SpaceError(f"freeze.{stage}: list at least one preset")
            for p in presets:
                freeze_preset(p)
        for key, dist in self.params.items():
            ((kind, args),) = dist.items()
            try:
                DISTRIBUTIONS.get(kind)(args)
            except (KeyError, ValueError) as e:
                raise SpaceError(f"params.{key}: {e}") from None
        for name, cell in self.cells.items():
            self._check_cell(recipe, name, cell)
        if self.evaluate is not None:
            self._check_evaluate(recipe)
        # One recipe per corner of the space (each preset, each cell, each param's first option): an unknown
        # key or a value of the wrong type fails here with the recipe's own error.
        for config in self.corners(recipe):
            trial = trial_recipe(raw, self, config)
            for stage in self.stages:
                self._check_training_suite(trial, stage)

    def _check_cell(self, recipe: Recipe, name: str, cell: Cell) -> None:
        for stage, weights in cell.mix.items():
            if stage not in self.stages:
                raise SpaceError(f"cells.{name}.mix.{stage}: not one of the sweep's stages {self.stages}")
            have = set(recipe.stages[stage].data.sources)
            if missing := sorted(set(weights) - have):
                raise SpaceError(
                    f"cells.{name}.mix.{stage}: sources {missing} are not in stage {stage!r} ({sorted(have)})"
                )
        for stage, preset in cell.freeze.items():
            if stage not in self.stages:
                raise SpaceError(f"cells.{name}.freeze.{stage}: not one of the sweep's stages {self.stages}")
            freeze_preset(preset)

    def _check_training_suite(self, trial: Recipe, stage: str) -> None:
        """A stage's in-training benchmark reads its suite's files when the stage starts: check them now."""
        from vilaray.evals.tasks import TaskFileError, load_suite

        ev = trial.stages[stage].evaluation
        if ev.every:
            try:
                load_suite(ev.suite, ev.data_root)
            except (TaskFileError, OSError) as e:
                raise SpaceError(f"stages.{stage}.evaluation (run every {ev.every} steps): {e}") from None

    def _check_evaluate(self, recipe: Recipe) -> None:
        from vilaray.evals.tasks import TaskFileError, load_suite

        ev = self.evaluate
        try:
            suite, _ = load_suite(ev.suite, ev.root(recipe, self.stages))
        except (TaskFileError, OSError) as e:
            raise SpaceError(f"evaluate.suite: {e}") from None
        names = [t.name for t in suite.tasks]
        if unknown := sorted(set(ev.tasks or []) - set(names)):
            raise SpaceError(f"evaluate.tasks: no task named {unknown} in {ev.suite} ({names})")
        have = ev.metrics(names)
        for part in self.objective.parts():
            if part.startswith("harness/") and part not in have:
                raise SpaceError(f"objective: {part!r} is not one of the evaluation's scores {sorted(have)}")

    def corners(self, recipe: Recipe) -> list[dict]:
        base = self.example(recipe)
        out = [base]
        for stage, presets in self.freeze.items():
            out += [base | {f"freeze/{stage}": p} for p in presets]
        out += [base | {"cell": name} for name in self.cells]
        return out

    def example(self, recipe: Recipe) -> dict:
        """A config with the first value of everything (for checking keys)."""
        config: dict[str, Any] = {"seed": self.seeds[0]}
        for stage in self.mix:
            config[f"mix/{stage}"] = self.mixtures(recipe, stage)[0]
        for stage, presets in self.freeze.items():
            config[f"freeze/{stage}"] = presets[0]
        for key, dist in self.params.items():
            ((kind, args),) = dist.items()
            config[f"set/{key}"] = args[0]
        if self.cells:
            config["cell"] = next(iter(self.cells))
        return config

    # ------------------------------------------------------------------------------------ to Ray Tune

    def mixtures(self, recipe: Recipe, stage: str) -> list[dict[str, float]]:
        """The stage's mixtures, normalised: listed points, or `num_samples` seeded Dirichlet draws."""
        mix = self.mix[stage]
        if mix.points is not None:
            return [{k: v / sum(p.values()) for k, v in p.items()} for p in mix.points]
        names = mix.sources or list(recipe.stages[stage].data.sources)
        rng = np.random.default_rng([self.seed, self.stages.index(stage)])
        draws = rng.dirichlet([mix.alpha] * len(names), size=self.num_samples)
        return [{n: round(float(w), 6) for n, w in zip(names, row)} for row in draws]

    def tune_samples(self) -> int:
        """Tune's `num_samples`: 1 when the space is a grid (grid mode, or drawn mixtures: one trial each),
        else `num_samples` draws."""
        return 1 if self.mix or self.mode == "grid" else self.num_samples

    def param_space(self, recipe: Recipe) -> dict:
        """Ray Tune's param space. Mixtures and seeds are grids; presets and choices a grid in grid mode, else
        sampled."""
        from ray import tune

        space: dict[str, Any] = {}
        grid = self.mode == "grid"
        if self.mix:
            # Several stages' mixtures move together: trial i takes draw i of every stage.
            stages = list(self.mix)
            draws = [self.mixtures(recipe, s) for s in stages]
            joint = [dict(zip(stages, combo)) for combo in zip(*draws)]
            space["mixes"] = tune.grid_search(joint)
        for stage, presets in self.freeze.items():
            space[f"freeze/{stage}"] = tune.grid_search(presets) if grid else tune.choice(presets)
        for key, dist in self.params.items():
            ((kind, args),) = dist.items()
            name, values = DISTRIBUTIONS.get(kind)(args)
            if name == "choice":
                # Grid mode is an ablation: every option of a choice is a cell.
                space[f"set/{key}"] = tune.grid_search(values) if grid else tune.choice(values)
            else:
                space[f"set/{key}"] = getattr(tune, name)(*values)
        if self.cells:
            space["cell"] = tune.grid_search(list(self.cells))
        space["seed"] = tune.grid_search(self.seeds) if len(self.seeds) > 1 else self.seeds[0]
        return space


def flatten(config: dict) -> dict:
    """A Tune config with its joint `mixes` spread into `mix/<stage>` keys."""
    out = {k: v for k, v in config.items() if k != "mixes"}
    for stage, weights in (config.get("mixes") or {}).items():
        out[f"mix/{stage}"] = weights
    return out


def trial_overrides(space: TuneSpace, config: dict) -> dict[str, Any]:
    """Dotted recipe keys -> values for one trial: its stages' budget, mixtures, freezing, params, seed."""
    config = flatten(config)
    out: dict[str, Any] = {}
    every = space.report_every or (space.scheduler.grace_steps if space.scheduler.name == "asha" else None)
    parts = space.objective.parts()
    seed = config.get("seed", 0)
    out["seed"] = seed  # the recipe's seed, so best.yaml says which seed the trial ran
    for stage in space.stages:
        out[f"stages.{stage}.train.max_steps"] = space.budget_steps
        # Set in every section, over any the recipe pins: a seed that reached only `train` would leave the
        # deterministic data order alone, and a grid's seeds would be replicas of one run.
        out[f"stages.{stage}.train.seed"] = seed
        out[f"stages.{stage}.data.seed"] = seed
        if every and any(p.startswith("val_loss") for p in parts):
            out[f"stages.{stage}.validation.every"] = every
        if every and any(p.startswith("eval/") for p in parts):
            out[f"stages.{stage}.evaluation.every"] = every
    if "cell" in config:
        cell = space.cells[config["cell"]]
        config = (
            {f"mix/{stage}": w for stage, w in cell.mix.items()}
            | {f"freeze/{stage}": p for stage, p in cell.freeze.items()}
            | {f"set/{key}": v for key, v in cell.set.items()}
            | config
        )
    for key, value in config.items():
        kind, _, rest = key.partition("/")
        if kind == "mix":
            out[f"stages.{rest}.data.mix"] = dict(value)
        elif kind == "freeze":
            out[f"stages.{rest}.freeze"] = freeze_preset(value)
        elif kind == "set":
            out[rest] = value
    return out


def trial_recipe(raw: dict, space: TuneSpace, config: dict) -> Recipe:
    """The recipe a trial trains: the sweep's recipe with the trial's overrides (stage sections merged
    under `defaults` first, so an override reaches the stage as `--set` would)."""
    patched = copy.deepcopy(raw)
    for key, value in trial_overrides(space, config).items():
        set_key(patched, key.split("."), copy.deepcopy(value), key)
    try:
        return recipe_from_dict(patched, origin=f"trial {config}")
    except RecipeError as e:
        raise SpaceError(str(e)) from None


def load_space(path: str | Path, recipe: Recipe, raw: dict, start_from: str | None = None) -> TuneSpace:
    """Parse and check a space file against the recipe (`raw`: the recipe as loaded, overrides applied);
    `start_from` replaces the file's."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
        if start_from is not None:
            data["start_from"] = start_from
        space = TuneSpace.model_validate(data)
    except yaml.YAMLError as e:
        raise SpaceError(f"search space {path} is not valid YAML: {e}") from e
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise SpaceError(
            f"search space {path}: {loc}: {first['msg'].removeprefix('Value error, ')}"
        ) from None
    space.check(recipe, raw)
    return space
