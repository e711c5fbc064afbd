"""Fault injection for tests and drills: a NaN loss at chosen steps, a worker SIGKILLed at a chosen step.

Faults fire at exact steps, so a recovery test checks what must happen rather than what a timer happened
to catch: the SIGKILL waits until Ray Train has registered the stage's latest checkpoint (its checkpoint
manager snapshot lists it), then kills the last rank's process once; the restarted attempt finds the
marker and runs on.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

SNAPSHOT = "checkpoint_manager_snapshot.json"  # written by Ray Train V2's controller on registration


@dataclass
class FaultPlan:
    """What to inject, in plain fields (shipped to every rank inside the stage job)."""

    nonfinite_at: list[int] = field(default_factory=list)  # rank 0's first micro-batch gets a NaN loss
    sigkill_at: int | None = None  # the last rank SIGKILLs itself before this step, on the first attempt
    register_timeout_s: float = 300.0


class Faults:
    """The plan, live on one rank."""

    def __init__(self, plan: FaultPlan, rank: int, world: int, stage_dir: Path, trainer_dir: Path):
        self.plan, self.rank, self.world = plan, rank, world
        self.nonfinite = set(plan.nonfinite_at)
        self.marker = stage_dir / "faults" / "sigkilled.json"
        self.snapshot = trainer_dir / SNAPSHOT

    def nan_loss(self, step: int) -> bool:
        if self.rank != 0 or step not in self.nonfinite:
            return False
        self.nonfinite.discard(step)
        return True

    def maybe_sigkill(self, step: int, last_checkpoint: int) -> None:
        if self.plan.sigkill_at != step or self.rank != self.world - 1 or self.marker.exists():
            return
        self._wait_registered(last_checkpoint)
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(json.dumps({"pid": os.getpid(), "step": step, "rank": self.rank}))
        os.kill(os.getpid(), signal.SIGKILL)

    def _wait_registered(self, step: int) -> None:
        deadline = time.monotonic() + self.plan.register_timeout_s
        while time.monotonic() < deadline:
            if self._registered_step() >= step:
                return
            time.sleep(0.2)
        raise TimeoutError(f"Ray Train did not register the step-{step} checkpoint in {self.snapshot}")

    def _registered_step(self) -> int:
        try:
            state = json.loads(self.snapshot.read_text())
        except (OSError, ValueError):  # not written yet, or mid-write
            return -1
        latest = state.get("latest_checkpoint_result") or {}
        return int(latest.get("metrics", {}).get("step", -1))
