"""Rank-0 training metrics: TensorBoard events + a JSONL log in the run directory, and a progress line."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


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

    def summary(self, world: int) -> dict[str, float]:
        return {
            "step_time_s": self.seconds,
            "data_wait_frac": self.wait / self.seconds if self.seconds else 0.0,
            # This rank's tokens x ranks: ranks receive equal row counts of similar fill.
            "tokens_per_s": self.tokens * world / self.seconds if self.seconds else 0.0,
            "packing_efficiency": self.tokens / self.slots if self.slots else 0.0,
        }


class MetricsLog:
    """Writes every step to `<run>/<stage>/metrics.jsonl` and TensorBoard; prints a line with ETA."""

    def __init__(self, run_dir: Path, stage: str, enabled: bool, every: int = 1):
        self.enabled = enabled
        self.every = every
        self.t0 = time.perf_counter()
        self.first_step: int | None = None
        if not enabled:
            return
        out = run_dir / stage
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = (out / "metrics.jsonl").open("a")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out / "tensorboard"))
        self.stage = stage

    def log(self, step: int, row: dict[str, float], max_steps: int) -> None:
        if not self.enabled:
            return
        if self.first_step is None:
            self.first_step, self.t0 = step, time.perf_counter()
        self.jsonl.write(json.dumps({"step": step, **row}) + "\n")
        self.jsonl.flush()
        for k, v in row.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self.tb.add_scalar(k, v, step)
        if step % self.every and step != max_steps and step != self.first_step:
            return
        done = step - self.first_step
        eta = (time.perf_counter() - self.t0) / done * (max_steps - step) if done else float("nan")
        print(
            f"[{self.stage}] step {step}/{max_steps} loss {row['loss']:.4f} lr {row['lr']:.2e} "
            f"gnorm {row['grad_norm']:.3f} tok/s {row['tokens_per_s']:.0f} "
            f"wait {row['data_wait_frac']:.0%} eta {eta:.0f}s",
            flush=True,
        )

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
