"""Where a trainer runs: its rank, world size and device, the checkpoint it resumes from, where results go.

`RayTrainContext` is a Ray Train worker's (what `TorchTrainer` runs); `LocalContext` is one process without
Ray Train, with a 1-rank gloo group so DeepSpeed runs as it does under Ray (the trainer's single-process
tests and a debugging run). The trainer sees only this interface.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist


class TrainContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def resume_dir(self) -> contextlib.AbstractContextManager[Path | None]:
        """The latest registered checkpoint as a local directory, or None on a fresh start."""

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        """Hand a step's metrics (and this rank's part of a checkpoint, written to `checkpoint`) on."""


class RayTrainContext:
    """A Ray Train V2 worker: `ray.train.get_context`, `get_checkpoint` and `report`."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        _quiet_report_logging()

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[Path | None]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield Path(d)

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint) if checkpoint is not None else None
        ray.train.report(metrics, checkpoint=ckpt)


@dataclass
class LocalContext:
    """Rank 0 of 1 on the CPU. Checkpoints are copied to `<root>/checkpoint_<step>` and the newest one is
    resumed from; reports are kept in `reports`, as Ray Train would have received them."""

    root: Path
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reports: list[dict] = field(default_factory=list)

    def checkpoints(self) -> list[Path]:
        return sorted(self.root.glob("checkpoint_*"))

    @contextlib.contextmanager
    def resume_dir(self) -> Iterator[Path | None]:
        found = self.checkpoints()
        yield found[-1] if found else None

    def report(self, metrics: dict, checkpoint: Path | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            shutil.copytree(
                checkpoint, self.root / f"checkpoint_{int(metrics['step']):06d}", dirs_exist_ok=True
            )

    @contextlib.contextmanager
    def process_group(self) -> Iterator[None]:
        """This process as rank 0 of 1, as DeepSpeed's engine expects: the LOCAL_RANK a launcher would set
        (for the duration) and a 1-rank gloo group, created on first use and kept for the process's life
        (DeepSpeed caches its groups across engines, so a destroyed group would leave them dangling)."""
        if not dist.is_initialized():
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        elif dist.get_world_size() != 1:
            raise RuntimeError("a local run needs this process to be alone: it is in a larger process group")
        with _env(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1"):
            yield


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _quiet_report_logging() -> None:
    """Ray Train logs every `report` call's full metrics at INFO; the progress line already says it."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: keep its logging as is
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
