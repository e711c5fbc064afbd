"""A stage's progress on the driver's console, read from rank 0's records while `TorchTrainer.fit()` runs.

Workers' output stays in Ray's log files (jobs start Ray with `log_to_driver=False`), so the driver tails
what rank 0 writes anyway: `<stage>/worker.json` (where vilaray was imported from, what trains, a resume)
and `<stage>/metrics.jsonl` (one row per step), printing a line every `log_every` steps with an ETA.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

WORKER_INFO = "worker.json"


def progress_line(stage: str, step: int, max_steps: int, row: dict, eta_s: float) -> str:
    line = (
        f"[{stage}] step {step}/{max_steps} loss {row['loss']:.4f} lr {row['lr']:.2e} "
        f"gnorm {row['grad_norm']:.3f} tok/s {row['tokens_per_s']:.0f} wait {row['data_wait_frac']:.0%}"
    )
    if "val_loss" in row:
        line += f" val {row['val_loss']:.4f}"
    evals = {k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}
    if evals:
        line += " " + " ".join(f"{k} {v:.1f}" for k, v in evals.items())
    return line + (f" eta {eta_s:.0f}s" if math.isfinite(eta_s) else "")


def write_worker_info(stage_dir: Path, info: dict) -> None:
    """Rank 0's start-up facts, for the driver to print (`vilaray`, `what_trains`, `resumed_from`)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / f".{WORKER_INFO}.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(stage_dir / WORKER_INFO)  # atomic: the tail never reads half a file


class ProgressTail:
    """Context manager: a daemon thread prints the stage's progress until the block ends, then the rest."""

    def __init__(self, stage_dir: Path, stage: str, max_steps: int, every: int, poll_s: float = 0.5):
        self.stage_dir, self.stage, self.max_steps = Path(stage_dir), stage, max_steps
        self.every, self.poll_s = max(1, every), poll_s
        self.metrics = self.stage_dir / "metrics.jsonl"
        # A resumed run appends to the same files: start after what earlier submissions wrote.
        self.offset = self.metrics.stat().st_size if self.metrics.is_file() else 0
        info = self.stage_dir / WORKER_INFO
        self.info_mtime = info.stat().st_mtime if info.is_file() else None
        self.first: tuple[int, float] | None = None
        self.last_printed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress-{stage}", daemon=True)

    def __enter__(self) -> ProgressTail:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll(final=True)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self, final: bool = False) -> None:
        self._print_worker_info()
        if not self.metrics.is_file():
            return
        with self.metrics.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # only whole lines: rank 0 may be mid-write
        self.offset += end
        rows = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
        for i, row in enumerate(rows):
            self._row(row, last_in_file=final and i == len(rows) - 1)

    def _row(self, row: dict, last_in_file: bool) -> None:
        step, now = int(row["step"]), time.monotonic()
        if self.first is None:
            self.first = (step, now)
        due = step % self.every == 0 or step == self.max_steps or step == self.first[0] or last_in_file
        if not due or step == self.last_printed:
            return
        done = step - self.first[0]
        eta = (now - self.first[1]) / done * (self.max_steps - step) if done else float("nan")
        print(progress_line(self.stage, step, self.max_steps, row, eta), flush=True)
        self.last_printed = step

    def _print_worker_info(self) -> None:
        path = self.stage_dir / WORKER_INFO
        if not path.is_file() or path.stat().st_mtime == self.info_mtime:
            return
        self.info_mtime = path.stat().st_mtime
        info = json.loads(path.read_text())
        print(f"[{self.stage}] workers import vilaray from {info['vilaray']}", flush=True)
        if info.get("resumed_from"):
            print(f"[{self.stage}] resumed from the checkpoint at step {info['resumed_from']}", flush=True)
        table = "\n".join(f"[{self.stage}]   {line}" for line in info["what_trains"].splitlines())
        print(f"[{self.stage}] what trains:\n{table}", flush=True)
