"""Entry points that run a stage's `Trainer`: on a Ray Train worker, or in this one process."""

from __future__ import annotations

from pathlib import Path

from vilaray.train.context import LocalContext, RayTrainContext
from vilaray.train.stage_job import StageJob
from vilaray.train.trainer import Trainer


def train_loop_per_worker(config: dict) -> None:
    """What `TorchTrainer` runs on every worker: the driver's held-out rows and benchmark prompts arrive as
    object refs (every rank reads the same object)."""
    import ray

    def fetch(ref):
        return ray.get(ref) if ref is not None else None

    job = StageJob(**config["job"])
    Trainer(job, RayTrainContext(), fetch(config.get("validation")), fetch(config.get("evaluation"))).train()


def train_locally(config: dict, root: Path) -> LocalContext:
    """The same stage as one rank in this process, without Ray Train; checkpoints and reports under `root`
    (the trainer's single-process tests, and a debugging run)."""
    job = StageJob(**config["job"])
    ctx = LocalContext(root)
    with ctx.process_group():
        Trainer(job, ctx, config.get("validation"), config.get("evaluation")).train()
    return ctx
