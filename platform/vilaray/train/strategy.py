"""Training strategies: one object owns the engine (init, forward, backward, step, save, load, weights)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vilaray.registry import Registry
from vilaray.train.ds_config import compute_dtype, deepspeed_config
from vilaray.train.schedule import warmup_cosine
from vilaray.train.spec import TrainConfig

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


class Strategy:
    """The interface the trainer drives: the engine (setup, forward, backward, step, save, load, weights)
    and the collectives over the data-parallel ranks, which are the identity in a single process. An FSDP2
    strategy would implement the same methods."""

    device: torch.device

    def setup(self, model: torch.nn.Module, param_groups: list[dict]) -> None: ...
    def forward(self, **inputs) -> Any: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> None: ...
    def save(self, ckpt_dir: Path, client_state: dict) -> None: ...
    def load(self, ckpt_dir: Path) -> dict: ...
    def full_state_dict(self) -> dict[str, torch.Tensor] | None: ...

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist.is_initialized() else 0

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        """Element-wise sums over all ranks, in float64 (token counts stay exact)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if dist.is_initialized() and t.numel():
            dist.all_reduce(t)
        return t.tolist()

    def all_finite(self, value: torch.Tensor) -> bool:
        """True when `value` is finite on every rank (all ranks then take the same branch)."""
        return self.sum_over_ranks([0.0 if bool(torch.isfinite(value).all()) else 1.0])[0] == 0.0

    def any_rank(self, flag: bool) -> bool:
        return self.sum_over_ranks([1.0 if flag else 0.0])[0] > 0

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not dist.is_initialized():
            return [obj]
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def loss_tokens(self, micro_batches: list[dict]) -> int:
        """Loss-bearing tokens in this optimizer step on all ranks (packed rows differ in how many they hold)."""
        mine = sum(int(mb["num_loss_tokens"].sum()) for mb in micro_batches)
        return int(self.sum_over_ranks([float(mine)])[0])

    def reduce_by_source(self, by_source: dict[str, list]) -> dict[str, tuple[float, int]]:
        """Per-source (loss sum, token count) summed over all ranks. Source names are gathered first so
        every rank reduces the same vector even when its batches came from different sources."""
        names = sorted({n for part in self.gather_objects(sorted(by_source)) for n in part})
        summed = self.sum_over_ranks([float(x) for n in names for x in by_source.get(n, (0.0, 0))])
        return {n: (summed[2 * i], int(summed[2 * i + 1])) for i, n in enumerate(names)}


@STRATEGIES.register("deepspeed")
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
        return {k: v.detach().cpu().clone() for k, v in state.items()} if self.rank == 0 and state else None


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
    return STRATEGIES.get(cfg.strategy)(cfg, world_size, device)
