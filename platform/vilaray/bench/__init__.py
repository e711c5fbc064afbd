"""Benchmarks run by `jobs/benchmark.py <name>`, each measured against a baseline in the same run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from vilaray.registry import Registry


class BenchReport(Protocol):
    """What every benchmark returns: a table for people, a dict for the JSON file, and the failed floors."""

    failures: list[str]

    def table(self) -> str: ...

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: its options are the fields of `config` (a dataclass), `run` measures."""

    name: str
    summary: str
    config: type
    run: Callable[[Any], BenchReport]
    default_out: str
    ray_cpus: float | None = None  # logical CPUs of a local Ray (None: one per core)
    # A local Ray with the dashboard: Ray Train's placement-group cleaner needs its state API (Tune trials).
    dashboard: bool = False


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def register(bench: Benchmark) -> Benchmark:
    return BENCHMARKS.add(bench.name, bench)


# Benchmark modules register themselves on import.
from vilaray.bench import attention, data, evals, lm_head, serve, stage_data, train, tune  # noqa: E402,F401
