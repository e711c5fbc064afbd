"""Rank-0 training metrics: a JSONL log, TensorBoard events and (when configured) wandb."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from vilaray.train.spec import WandbConfig


class StepTimer:
    """Wall time per step split into waiting for data vs computing, and token throughput."""

    def __init__(self):
        self.t_step = time.perf_counter()
        self.t_wait = 0.0
        self.wait = 0.0
        self.tokens = 0
        self.slots = 0
        self.seconds = 0.0

    def start_wait(self) -> None:
        self.t_wait = time.perf_counter()

    def end_wait(self) -> None:
        self.wait = time.perf_counter() - self.t_wait

    def end_step(self, tokens: int, slots: int) -> None:
        now = time.perf_counter()
        self.seconds = now - self.t_step
        self.t_step = now
        self.tokens, self.slots = tokens, slots

    def exclude(self, seconds: float) -> None:
        """Keep time spent outside training (validation) out of the next step's time."""
        self.t_step += seconds

    def summary(self, world: int) -> dict[str, float]:
        return {
            "step_time_s": self.seconds,
            "data_wait_frac": self.wait / self.seconds if self.seconds else 0.0,
            # This rank's tokens x ranks: ranks receive equal row counts of similar fill.
            "tokens_per_s": self.tokens * world / self.seconds if self.seconds else 0.0,
            "packing_efficiency": self.tokens / self.slots if self.slots else 0.0,
        }


class JsonlSink:
    """`<stage>/metrics.jsonl`: one line per step, flushed, the record tests and tools read."""

    def __init__(self, out: Path, run: RunInfo):
        self.f = (out / "metrics.jsonl").open("a")

    def write(self, step: int, row: dict[str, float]) -> None:
        self.f.write(json.dumps({"step": step, **row}) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class TensorBoardSink:
    """`<stage>/tensorboard`: finite scalars (a NaN validation loss would break the plot's scale)."""

    def __init__(self, out: Path, run: RunInfo):
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out / "tensorboard"))

    def write(self, step: int, row: dict[str, float]) -> None:
        for k, v in row.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.tb.close()


class WandbSink:
    """A wandb run per stage, grouped by run name (or the config's group). Its id derives from the run
    directory, so a resubmitted run (same name) resumes the same wandb run instead of starting a second one."""

    def __init__(self, out: Path, run: RunInfo):
        import wandb

        cfg = run.wandb
        digest = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            mode=cfg.mode,
            tags=list(cfg.tags),
            group=cfg.group or run.name,
            name=f"{run.name}-{run.stage}",
            id=f"{run.stage}-{digest}",
            resume="allow",
            dir=str(out),
            config=run.config,
        )

    def write(self, step: int, row: dict[str, float]) -> None:
        self.run.log(row, step=step)

    def close(self) -> None:
        self.run.finish()


@dataclass(frozen=True)
class RunInfo:
    """What the sinks name their records by."""

    name: str
    stage: str
    config: dict
    wandb: WandbConfig | None = None

    def sinks(self, out: Path) -> list:
        chosen = [JsonlSink, TensorBoardSink] + ([WandbSink] if self.wandb else [])
        return [make(out, self) for make in chosen]


class MetricsLog:
    """Writes every step to the run's sinks (metrics.jsonl, TensorBoard, wandb); the driver prints progress
    from metrics.jsonl (vilaray.train.progress)."""

    def __init__(self, run_dir: Path, run: RunInfo, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        out = run_dir / run.stage
        out.mkdir(parents=True, exist_ok=True)
        self.sinks = run.sinks(out)

    def log(self, step: int, row: dict[str, float]) -> None:
        if self.enabled:
            for sink in self.sinks:
                sink.write(step, row)

    def close(self) -> None:
        if self.enabled:
            for sink in self.sinks:
                sink.close()
