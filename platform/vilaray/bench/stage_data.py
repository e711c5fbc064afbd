"""Stage-data benchmark: a stage's rows from its mixture capped at what the stage can train on, against the
same mixture uncapped (sources tokenizing ahead of the mix), on the same rows, alternated in one run."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import ray

from vilaray.bench import Benchmark, register
from vilaray.compose import plan_stage
from vilaray.config import load_recipe
from vilaray.data.prepare import preserved_order, write_shards
from vilaray.data.quarantine import QuarantineActor

UNCAPPED, CAPPED = "uncapped", "capped"


@dataclass(frozen=True)
class StageDataBenchConfig:
    """Options of `jobs/benchmark.py stage-data`; every field is a `--flag` of the same name."""

    recipe: str = field(default="jobs/recipes/tiny.yaml", metadata={"help": "the recipe whose stage is read"})
    stage: str = field(default="pretrain", metadata={"help": "the stage whose mixture is read"})
    world: str = field(default="artifacts/shapes", metadata={"help": "data.root of every stage"})
    assets: str = field(default="artifacts/tiny-vlm", metadata={"help": "model.path (tokenizer, geometry)"})
    steps: int = field(default=0, metadata={"help": "the stage's max_steps (0: the recipe's)"})
    workers: int = field(default=0, metadata={"help": "train workers the rows are for (0: the recipe's)"})
    reps: int = field(default=2, metadata={"help": "rounds of both sides, in alternating order"})
    warmup: bool = field(
        default=True, metadata={"help": "read a few rows untimed first (worker imports, file cache)"}
    )


@dataclass
class Timed:
    side: str
    seconds: float
    cpu_seconds: float | None  # the whole machine's busy CPU time (Linux), all processes


@dataclass
class StageDataReport:
    config: dict
    rows: int
    same_rows: bool
    runs: list[Timed]
    failures: list[str] = field(default_factory=list)

    def mean(self, side: str, what: str) -> float | None:
        values = [getattr(r, what) for r in self.runs if r.side == side and getattr(r, what) is not None]
        return statistics.fmean(values) if values else None

    def ratio(self, what: str) -> float | None:
        """Uncapped over capped (above 1: the cap saves), from the two measured sides."""
        a, b = self.mean(UNCAPPED, what), self.mean(CAPPED, what)
        return a / b if a is not None and b else None

    def table(self) -> str:
        cfg = self.config
        lines = [
            f"stage-data: {cfg['recipe']} stage {cfg['stage']}, {self.rows} rows, {cfg['reps']} round(s)",
            f"{'side':<10}{'wall s':>10}{'CPU s':>10}",
        ]
        for side in (UNCAPPED, CAPPED):
            cpu = self.mean(side, "cpu_seconds")
            lines.append(
                f"{side:<10}{self.mean(side, 'seconds'):>10.1f}{cpu if cpu is None else f'{cpu:.1f}':>10}"
            )
        for what, label in (("seconds", "wall"), ("cpu_seconds", "CPU")):
            r = self.ratio(what)
            if r is not None:
                lines.append(f"{label} uncapped / capped: {r:.2f}x")
        lines.append(f"same rows in the same order: {'yes' if self.same_rows else 'NO'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "rows": self.rows,
            "same_rows": self.same_rows,
            "runs": [asdict(r) for r in self.runs],
            "means": {
                s: {w: self.mean(s, w) for w in ("seconds", "cpu_seconds")} for s in (UNCAPPED, CAPPED)
            },
            "ratios": {w: self.ratio(w) for w in ("seconds", "cpu_seconds")},
            "failures": self.failures,
        }


def machine_busy_seconds() -> float | None:
    """CPU time the machine has spent busy since boot (all processes: the driver and Ray's), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def read_rows(planned, rows: int, capped: bool, out: Path) -> tuple[Timed, list]:
    """The stage's first `rows` rows written as prepared shards; the sample ids of each row, in order."""
    ledger = QuarantineActor.remote(None, 0)
    mixture = planned.mixture(ledger, rows if capped else None)
    cpu0, t0 = machine_busy_seconds(), time.perf_counter()
    shards, _ = write_shards(mixture, out, rows, rows_per_shard=1024)
    seconds, cpu1 = time.perf_counter() - t0, machine_busy_seconds()
    ray.kill(ledger)
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    ids = [
        i for s in shards for i in pq.read_table(s, columns=["sample_ids"]).column("sample_ids").to_pylist()
    ]
    return Timed(CAPPED if capped else UNCAPPED, seconds, cpu), ids


def run_stage_data_benchmark(cfg: StageDataBenchConfig) -> StageDataReport:
    from vilaray.config import RecipeError
    from vilaray.train.runner import absolute_recipe, rows_needed

    if cfg.reps < 1:
        raise ValueError(f"--reps: {cfg.reps} rounds, need at least 1")
    sets = [f"model.path={cfg.assets}", f"defaults.data.root={cfg.world}"]
    sets += [f"stages.{cfg.stage}.train.max_steps={cfg.steps}"] if cfg.steps else []
    sets += [f"stages.{cfg.stage}.train.num_workers={cfg.workers}"] if cfg.workers else []
    recipe = absolute_recipe(load_recipe(cfg.recipe, sets))
    if cfg.stage not in recipe.stages:
        raise RecipeError(
            f"--stage: {cfg.stage!r} is not a stage of {cfg.recipe}; stages are {list(recipe.stages)}"
        )
    plan = plan_stage(recipe, cfg.stage, recipe.model)
    rows = rows_needed(plan.config.train)
    runs, seen = [], {}
    with preserved_order(), tempfile.TemporaryDirectory(prefix="vilaray-stage-data-") as tmp:
        if cfg.warmup:
            (Path(tmp) / "warmup").mkdir()
            read_rows(plan.data, plan.config.data.block_rows, True, Path(tmp) / "warmup")
        for rep in range(cfg.reps):
            # Alternated, so a drift in the machine's speed biases neither side; the capped side goes
            # first, so what the warm-up left cold counts against it.
            for capped in (True, False) if rep % 2 == 0 else (False, True):
                out = Path(tmp) / f"{rep}-{capped}"
                out.mkdir()
                timed, ids = read_rows(plan.data, rows, capped, out)
                runs.append(timed)
                seen.setdefault(capped, ids)
    same = seen[False] == seen[True] and len(seen[True]) == rows
    report = StageDataReport(asdict(cfg), rows, same, runs)
    report.failures = check(report)
    return report


def check(report: StageDataReport) -> list[str]:
    """The cap is only worth having if it changes nothing that trains: the same rows in the same order."""
    return (
        []
        if report.same_rows
        else [f"the capped mixture's first {report.rows} rows differ from the uncapped"]
    )


register(
    Benchmark(
        name="stage-data",
        summary="a stage's rows from its mixture capped at what the stage trains on vs uncapped (wall, CPU)",
        config=StageDataBenchConfig,
        run=run_stage_data_benchmark,
        default_out="artifacts/bench/stage_data.json",
        # As a job's local Ray: tokenizer actors (data.encode_cpus each) and repartition tasks need slots.
        ray_cpus=8,
    )
)
