"""Tune benchmark: N identical short trials run back to back with the stage runner, then as a Tune sweep
(FIFO, one at a time) in the same run: the sweep's overhead over the bare trials, and trials per hour."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from vilaray.bench import Benchmark, register


@dataclass(frozen=True)
class TuneBenchConfig:
    """Options of `jobs/benchmark.py tune`; every field is a `--flag` of the same name."""

    trials: int = field(default=3, metadata={"help": "identical trials on each side"})
    steps: int = field(default=4, metadata={"help": "pretraining steps per trial"})
    root: str = field(
        default="artifacts/bench", metadata={"help": "cache folder for the world and tiny assets"}
    )
    max_overhead: float = field(
        default=0.15, metadata={"help": "goal: (sweep - back to back) / back to back"}
    )
    seed: int = 0


@dataclass
class TuneBenchReport:
    config: dict
    back_to_back_s: list[float]  # each trial through run_stage, one after another
    sweep_s: float  # the same trials as one Tune sweep (Tuner.fit, end to end)
    sweep_trials: int  # trials the sweep completed
    failures: list[str] = field(default_factory=list)

    @property
    def overhead(self) -> float:
        base = sum(self.back_to_back_s)
        return (self.sweep_s - base) / base if base > 0 else float("inf")

    def trials_per_hour(self) -> dict[str, float]:
        base = sum(self.back_to_back_s)
        return {
            "back_to_back": 3600 * len(self.back_to_back_s) / base if base else 0.0,
            "sweep": 3600 * self.sweep_trials / self.sweep_s if self.sweep_s else 0.0,
        }

    def to_dict(self) -> dict:
        return asdict(self) | {
            "benchmark": "tune",
            "passed": not self.failures,
            "overhead": self.overhead,
            "trials_per_hour": self.trials_per_hour(),
        }

    def table(self) -> str:
        cfg, per_hour = self.config, self.trials_per_hour()
        each = ", ".join(f"{s:.1f}" for s in self.back_to_back_s)
        return "\n".join(
            [
                f"tune benchmark: {cfg['trials']} identical trials of {cfg['steps']} pretraining steps",
                f"  back to back (run_stage): {sum(self.back_to_back_s):.1f} s ({each}); "
                f"{per_hour['back_to_back']:.0f} trials/hour",
                f"  Tune sweep (FIFO):        {self.sweep_s:.1f} s, {self.sweep_trials} trials; "
                f"{per_hour['sweep']:.0f} trials/hour",
                f"  overhead (sweep - back to back) / back to back: {self.overhead:+.1%} "
                f"(goal <= {cfg['max_overhead']:.0%})",
                "",
                "PASS" if not self.failures else "FAIL: " + "; ".join(self.failures),
            ]
        )


def check(cfg: TuneBenchConfig, report: TuneBenchReport) -> list[str]:
    failures = []
    if report.sweep_trials != cfg.trials:
        failures.append(f"the sweep completed {report.sweep_trials} of {cfg.trials} trials")
    if not report.overhead <= cfg.max_overhead:
        failures.append(f"sweep overhead {report.overhead:.1%} > {cfg.max_overhead:.0%}")
    return failures


def bench_space(cfg: TuneBenchConfig, start_from: Path) -> dict:
    """N copies of one cell: the same mixture, freezing and seed (grid mode runs every listed point)."""
    mix = {"interleaved": 1, "pairs": 2, "text": 1}
    return {
        "stages": ["pretrain"],
        "start_from": str(start_from),
        "mode": "grid",
        "budget_steps": cfg.steps,
        "report_every": cfg.steps,
        "mix": {"pretrain": {"points": [mix] * cfg.trials}},
        "objective": {"metric": "val_loss", "mode": "min"},
        "scheduler": {"name": "fifo"},
    }


def run_tune_benchmark(cfg: TuneBenchConfig) -> TuneBenchReport:
    from vilaray.config import apply_overrides, recipe_from_dict
    from vilaray.synth.assets import build_assets
    from vilaray.synth.world import build_world
    from vilaray.train.runner import RunPaths, run_stage
    from vilaray.tune.space import TuneSpace, trial_recipe
    from vilaray.tune.sweep import tuner
    from vilaray.tune.trial import Sweep

    root = Path(cfg.root).resolve()
    world = build_world(root / "world-tiny", seed=cfg.seed, scale="tiny").root
    assets = build_assets(world, root / "tiny-vlm-tiny")
    runs = root / "tune-bench" / str(time.time_ns())
    recipe_path = Path(__file__).resolve().parents[3] / "jobs" / "recipes" / "tiny.yaml"
    raw = apply_overrides(
        yaml.safe_load(recipe_path.read_text()),
        [f"model.path={assets}", f"defaults.data.root={world}", f"run_root={runs}",
         "defaults.train.num_workers=1", "defaults.train.zero_stage=0", "defaults.train.warmup_steps=1",
         f"defaults.train.checkpoint_every={cfg.steps}", "defaults.validation.rows_per_source=2"],
    )  # fmt: skip
    recipe = recipe_from_dict(raw)
    space = TuneSpace.model_validate(bench_space(cfg, assets))
    space.check(recipe, raw)
    config = space.example(recipe)

    back_to_back = []
    for i in range(cfg.trials):
        t0 = time.perf_counter()
        paths = RunPaths(f"b2b{i}", str(runs / "train"), runs / "back-to-back" / f"b2b{i}")
        run_stage(trial_recipe(raw, space, config), "pretrain", paths, start_from=assets)
        back_to_back.append(time.perf_counter() - t0)

    sweep = Sweep("tune-bench", runs / "sweep", raw, recipe, space, os.getcwd())
    sweep.root.mkdir(parents=True)
    t, _ = tuner(sweep, space.param_space(recipe), space.tune_samples(), "sweep")
    t0 = time.perf_counter()
    grid = t.fit()
    sweep_s = time.perf_counter() - t0
    done = sum(1 for r in grid if r.error is None and (r.metrics or {}).get("trial_step") == cfg.steps)
    report = TuneBenchReport(asdict(cfg), back_to_back, sweep_s, done)
    report.failures = check(cfg, report)
    return report


register(
    Benchmark(
        name="tune",
        summary="a Tune sweep of identical short trials vs the same trials back to back (overhead, trials/hour)",
        config=TuneBenchConfig,
        run=run_tune_benchmark,
        default_out="artifacts/bench/tune.json",
        # Train workers (0.5), three tokenizer actors (0.5 each) and the trial driver, as logical slots.
        ray_cpus=8,
        dashboard=True,
    )
)
