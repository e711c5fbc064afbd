"""Eval benchmark: batched Ray Data inference against one-at-a-time generation, same model and prompts."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vilaray.bench import Benchmark, register

SUITE = Path(__file__).resolve().parents[3] / "evals" / "shapes.yaml"


@dataclass(frozen=True)
class EvalBenchConfig:
    """Options of `jobs/benchmark.py eval`; every field is a `--flag` of the same name."""

    model: str = field(
        default="", metadata={"help": "export to run (default: the tiny VLM, built if missing)"}
    )
    root: str = field(default="artifacts/bench", metadata={"help": "cache of the world and tiny assets"})
    suite: str = field(default=str(SUITE), metadata={"help": "task suite YAML"})
    limit: int = field(default=100, metadata={"help": "samples per task"})
    shots: str = field(default="0,4", metadata={"help": "shot counts"})
    batch_size: int = field(default=16, metadata={"help": "prompts per Ray Data batch"})
    actors: int = field(default=1, metadata={"help": "model actors (one GPU each when present)"})


@dataclass
class Side:
    seconds: float
    items: int

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EvalBenchReport:
    config: dict
    one_at_a_time: Side
    batched: Side  # in one process, batch_size prompts per generate call: batching alone
    ray_batched: Side
    agreement: float  # fraction of prompts with the same prediction on both sides
    failures: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        base = self.one_at_a_time.items_per_s
        return self.ray_batched.items_per_s / base if base else float("inf")

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "one_at_a_time": asdict(self.one_at_a_time) | {"items_per_s": self.one_at_a_time.items_per_s},
            "batched": asdict(self.batched) | {"items_per_s": self.batched.items_per_s},
            "ray_batched": asdict(self.ray_batched) | {"items_per_s": self.ray_batched.items_per_s},
            "ratio": self.ratio,
            "agreement": self.agreement,
            "failures": self.failures,
            "passed": not self.failures,
        }

    def table(self) -> str:
        a, c, b = self.one_at_a_time, self.batched, self.ray_batched
        return "\n".join(
            [
                f"eval benchmark: {a.items} prompts (end to end, model load included), cpus {os.cpu_count()}",
                f"one at a time       {a.seconds:8.1f}s {a.items_per_s:8.2f} prompts/s",
                f"batched, 1 process  {c.seconds:8.1f}s {c.items_per_s:8.2f} prompts/s",
                f"ray data batched    {b.seconds:8.1f}s {b.items_per_s:8.2f} prompts/s",
                f"ratio {self.ratio:.2f}x; same prediction on {self.agreement:.1%} of prompts",
                *(f"FAILED: {f}" for f in self.failures),
            ]
        )


def tiny_model_and_world(root: str) -> tuple[str, str]:
    """The untrained tiny VLM and the small shapes world (both cached under `root`)."""
    from vilaray.synth.assets import build_assets
    from vilaray.synth.world import build_world

    world = build_world(Path(root) / "world-small", seed=0, scale="small").root
    return str(build_assets(world, Path(root) / "tiny-vlm-small")), str(world)


def run_eval_benchmark(cfg: EvalBenchConfig) -> EvalBenchReport:
    from vilaray.evals.harness import load_tasks, prompt_items
    from vilaray.evals.inference import infer_local, infer_ray
    from vilaray.evals.tasks import load_suite

    model, world = tiny_model_and_world(cfg.root)
    model = cfg.model or model
    suite, base = load_suite(cfg.suite, world)
    shots = [int(k) for k in cfg.shots.split(",")]
    items = prompt_items(load_tasks(suite, base, cfg.limit), shots, suite.seed)
    t0 = time.perf_counter()
    local = infer_local(model, items, batch_size=1)
    t1 = time.perf_counter()
    infer_local(model, items, batch_size=cfg.batch_size)
    t2 = time.perf_counter()
    batched = infer_ray(model, items, batch_size=cfg.batch_size, actors=cfg.actors)
    t3 = time.perf_counter()
    same = sum(local[k]["prediction"] == batched[k]["prediction"] for k in local) / max(1, len(local))
    sides = [Side(b - a, len(items)) for a, b in ((t0, t1), (t1, t2), (t2, t3))]
    report = EvalBenchReport(asdict(cfg), *sides, same)
    report.failures = check(report)
    return report


def check(report: EvalBenchReport, floor: float = 1.0) -> list[str]:
    """Batched Ray Data inference must beat one prompt at a time (by `floor` x)."""
    if report.ratio < floor:
        return [f"batched Ray Data inference at {report.ratio:.2f}x one-at-a-time, below {floor}x"]
    return []


register(
    Benchmark(
        name="eval",
        summary="batched Ray Data inference vs one-at-a-time generation on the same model and prompts",
        config=EvalBenchConfig,
        run=run_eval_benchmark,
        default_out="artifacts/bench/eval.json",
    )
)
