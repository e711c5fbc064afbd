"""Training strategies: one object owns the engine (init, forward, backward, step, save, load, weights)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from vilaray.train.ds_config import compute_dtype, deepspeed_config
from vilaray.train.schedule import warmup_cosine
from vilaray.train.spec import TrainConfig

STRATEGIES: dict[str, type[Strategy]] = {}


def register(name: str):
    def wrap(cls):
        STRATEGIES[name] = cls
        return cls

    return wrap


class Strategy:
    """The interface the worker loop drives; an FSDP2 strategy would implement the same methods."""

    def setup(self, model: torch.nn.Module, param_groups: list[dict]) -> None: ...
    def forward(self, **inputs) -> Any: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> None: ...
    def save(self, ckpt_dir: Path, client_state: dict) -> None: ...
    def load(self, ckpt_dir: Path) -> dict: ...
    def full_state_dict(self) -> dict[str, torch.Tensor] | None: ...


@register("deepspeed")
class DeepSpeedStrategy(Strategy):
    """DeepSpeed ZeRO 0-3 with the client's AdamW (per-component param groups) and warmup+cosine schedule."""

    TAG = "state"

    def __init__(self, cfg: TrainConfig, world_size: int, device: torch.device):
        self.cfg = cfg
        self.world_size = world_size
        self.device = device
        self.on_gpu = device.type == "cuda"
        self.dtype = compute_dtype(cfg, self.on_gpu)
        self.engine = None

    def setup(self, model: torch.nn.Module, param_groups: list[dict]) -> None:
        import deepspeed

        if not self.on_gpu:
            # DeepSpeed's comm layer compiles its shared-memory all-reduce on CPU (~20 s, again for every
            # new venv path) for tensor-parallel inference; ZeRO training never calls it. An op marked
            # incompatible in DeepSpeed's cached compatibility table (one module dict) is not built.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        cfg = self.cfg
        optimizer = make_optimizer(cfg, param_groups, self.on_gpu)
        schedule = functools.partial(
            warmup_cosine, warmup=cfg.warmup_steps, total=cfg.max_steps, min_ratio=cfg.min_lr_ratio
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(cfg, self.world_size, self.on_gpu),
            dist_init_required=False,
        )

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def forward(self, **inputs):
        return self.engine(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def save(self, ckpt_dir: Path, client_state: dict) -> None:
        """Every rank writes its shard of the engine state (model, optimizer, scheduler) into one dir."""
        self.engine.save_checkpoint(str(ckpt_dir), tag=self.TAG, client_state=client_state)

    def load(self, ckpt_dir: Path) -> dict:
        _, client_state = self.engine.load_checkpoint(str(ckpt_dir), tag=self.TAG)
        if client_state is None:
            raise RuntimeError(f"checkpoint {ckpt_dir} could not be loaded")
        return client_state

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (gathered from partitions under ZeRO-3), None elsewhere.

        Collective under ZeRO-3: every rank must call it."""
        if self.cfg.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict()
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        return {k: v.detach().cpu().clone() for k, v in state.items()} if rank == 0 and state else None


def make_optimizer(cfg: TrainConfig, param_groups: list[dict], on_gpu: bool) -> torch.optim.Optimizer:
    """AdamW over the per-component param groups: torch's (fused on GPU), or, when ZeRO-Offload keeps the
    optimizer states in CPU memory, DeepSpeed's vectorised CPU Adam (JIT-built once; torch's AdamW stepping
    on the CPU is several times slower, and DeepSpeed refuses it there)."""
    kw = {"lr": cfg.lr, "betas": cfg.betas, "weight_decay": cfg.weight_decay}
    if cfg.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(param_groups, adamw_mode=True, **kw)
    return torch.optim.AdamW(param_groups, fused=on_gpu, **kw)


def make_strategy(cfg: TrainConfig, world_size: int, device: torch.device) -> Strategy:
    return STRATEGIES[cfg.strategy](cfg, world_size, device)
