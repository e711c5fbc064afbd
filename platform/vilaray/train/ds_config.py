"""DeepSpeed engine configuration derived from a TrainConfig (ZeRO stage, offload, precision, accumulation)."""

from __future__ import annotations

import torch

from vilaray.train.spec import TrainConfig


def compute_dtype(cfg: TrainConfig, on_gpu: bool) -> torch.dtype:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and on_gpu):
        return torch.bfloat16
    return torch.float32


def deepspeed_config(cfg: TrainConfig, world_size: int, on_gpu: bool) -> dict:
    """The engine config. The optimizer and LR schedule are built by the strategy and passed in, so the
    same param groups (per-component learning rates) work for every ZeRO stage."""
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 1:
        zero.update({"overlap_comm": on_gpu, "contiguous_gradients": True, "reduce_bucket_size": 5e7})
    if cfg.zero_stage == 3:
        zero.update(
            {
                "stage3_gather_16bit_weights_on_model_save": True,
                "stage3_param_persistence_threshold": 1e4,
                "stage3_prefetch_bucket_size": 5e7,
            }
        )
    device = "cpu"
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": device, "pin_memory": on_gpu}
    if cfg.offload_params:
        zero["offload_param"] = {"device": device, "pin_memory": on_gpu}
    bf16 = compute_dtype(cfg, on_gpu) == torch.bfloat16
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.clip_grad,
        "zero_optimization": zero,
        # bf16 keeps fp32 master weights in the optimizer; fp32 on CPU trains in full precision.
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
