"""Typed training configuration: parallelism, precision, optimisation, checkpoints, fault handling."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class WandbConfig(BaseModel):
    """Weights & Biases logging from rank 0; offline by default (files under the stage directory, uploaded
    later with `wandb sync`), so a cluster without internet access still trains."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(min_length=1)
    entity: str | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"
    tags: tuple[str, ...] = ()
    # The wandb group: by default the run's name (its stages together); a Tune trial's runs join their sweep.
    group: str | None = None


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A name in vilaray.train.strategy.STRATEGIES.
    strategy: str = "deepspeed"
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    # auto: bf16 compute with fp32 master weights on GPU, fp32 everywhere on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    # Optional cross-check: must equal micro_batch_size * grad_accum * num_workers.
    global_batch_size: int | None = None
    max_steps: int = Field(100, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float = Field(1.0, ge=0)
    activation_checkpointing: bool = False
    data_mode: Literal["streaming", "deterministic"] = "streaming"
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)
    log_every: int = Field(10, ge=1)
    # A NaN/inf loss: stop naming the step and the batch's sources, or skip the micro-batch (recorded and
    # counted; more than max_nonfinite_skips skips stops the run).
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_nonfinite_skips: int = Field(10, ge=0)
    # End this invocation after this step (checkpointing first), e.g. to fit a scheduler's time slot;
    # the next submission with the same run name resumes from there. The LR schedule still spans max_steps.
    stop_at_step: int | None = Field(None, ge=1)
    # After export, reload it with transformers and compare its logits with the engine's on one batch.
    verify_export: bool = True
    export_tolerance: float = Field(1e-4, gt=0)
    # MFU denominator in TFLOP/s; None: 989 (H100 dense bf16) on GPU, no MFU on CPU.
    peak_tflops: float | None = Field(None, gt=0)
    collective_timeout_s: int = Field(1800, ge=10)
    # Metrics also go to wandb when set (always to metrics.jsonl and TensorBoard).
    wandb: WandbConfig | None = None
    seed: int = 0

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        # Imported here: the strategies need torch, which this schema (and recipe loading) does not.
        from vilaray.train.strategy import STRATEGIES

        STRATEGIES.get(value)  # raises naming the choices
        return value

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        per_step = self.micro_batch_size * self.grad_accum * self.num_workers
        if self.global_batch_size is not None and self.global_batch_size != per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} != micro_batch_size {self.micro_batch_size} x "
                f"grad_accum {self.grad_accum} x num_workers {self.num_workers} = {per_step}"
            )
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        return self
