"""The Ray Train worker loop: build the model, run the strategy's steps, checkpoint, report, export."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from vilaray.config import StageConfig
from vilaray.model.spec import ModelSpec
from vilaray.train.batches import to_device
from vilaray.train.faults import FaultPlan, Faults
from vilaray.train.flops import FlopModel, peak_tflops
from vilaray.train.loss import (
    add_source_sums,
    global_loss_tokens,
    mean_losses,
    reduce_by_source,
    step_scale,
    token_loss_sums,
)
from vilaray.train.metrics import MetricsLog, RunInfo, StepTimer
from vilaray.train.progress import write_worker_info

log = logging.getLogger("vilaray.train")


class NonFiniteLoss(RuntimeError):
    """Training hit a NaN/inf loss; the message names the step and the sources of the batch."""


class NonFinitePolicy:
    """What a NaN/inf loss does: `stop` raises naming the step and batch; `skip` drops the micro-batch,
    records it (each rank its own, in `<stage>/nonfinite/rank<r>.jsonl`) and counts it, stopping once more
    than `max_skips` were dropped (a model that keeps diverging should not train on)."""

    def __init__(self, mode: str, max_skips: int, stage_dir: Path, stage: str, rank: int):
        self.mode, self.max_skips, self.stage, self.rank = mode, max_skips, stage, rank
        self.path = stage_dir / "nonfinite" / f"rank{rank}.jsonl"

    def handle(self, step: int, mb: dict, skipped: int) -> None:
        where = (
            f"stage {self.stage}: non-finite loss at step {step}; rank {self.rank}'s batch came from "
            f"{sorted(set(mb['sources']))} (samples {mb['sample_ids'][:4]}...)"
        )
        if self.mode == "stop":
            raise NonFiniteLoss(where)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(
                json.dumps({"step": step, "sources": mb["sources"], "sample_ids": mb["sample_ids"]}) + "\n"
            )
        log.warning("%s: skipped (%d so far)", where, skipped)
        if skipped > self.max_skips:
            raise NonFiniteLoss(f"{where}: {skipped} micro-batches skipped, more than max_nonfinite_skips")


@dataclass
class StageJob:
    """Everything a worker needs for one stage, in plain JSON-able fields (shipped to every rank)."""

    stage: str
    stage_config: dict
    model_spec: dict
    run_dir: str
    export_dir: str
    pad_id: int
    image_size: int
    # Ray Train's folder for this stage (checkpoints, the controller's checkpoint snapshot).
    trainer_dir: str = ""
    prepared_shards: list[str] | None = None
    record_sample_ids: bool = False
    faults: dict = field(default_factory=dict)  # a FaultPlan (tests, drills)

    @property
    def config(self) -> StageConfig:
        return StageConfig.model_validate(self.stage_config)


def _rank_world() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _device() -> torch.device:
    import ray.train.torch

    return ray.train.torch.get_device()


def _batches(job: StageJob, rank: int, world: int, skip_micro: int, seed: int):
    from vilaray.train.batches import deterministic_batches, streaming_batches

    cfg = job.config.train
    if cfg.data_mode == "deterministic":
        shards = [Path(p) for p in job.prepared_shards or []]
        return deterministic_batches(
            shards, rank, world, cfg.micro_batch_size, skip_micro, job.pad_id, job.image_size
        )
    return streaming_batches(
        cfg.micro_batch_size, job.pad_id, job.image_size, job.config.data.local_shuffle_buffer, seed
    )


def _all_finite(value: torch.Tensor, device: torch.device) -> bool:
    flag = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=device)
    if dist.is_initialized():
        dist.all_reduce(flag)
    return flag.item() == 0.0


def build_for_stage(job: StageJob):
    """The model with this stage's freezing applied, its tokenizer and the freezing report."""
    from vilaray.model.build import build_model
    from vilaray.model.freeze import apply_schedule

    built = build_model(ModelSpec.model_validate(job.model_spec), torch.float32)
    report = apply_schedule(built.model, job.config.freeze)
    return built, report


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    from vilaray.model.freeze import format_table, param_groups
    from vilaray.train.strategy import make_strategy

    job = StageJob(**config["job"])
    _quiet_report_logging()
    stage = job.config
    cfg = stage.train
    rank, world = _rank_world()
    device = _device()
    torch.manual_seed(cfg.seed)

    built, report = build_for_stage(job)
    model = built.model
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable()
    _write_pid(job, rank)
    # Counted before the engine exists: ZeRO-3 partitions parameters (numel 0 on a rank) at setup.
    flop_model = FlopModel.of(model)
    peak = peak_tflops(cfg.peak_tflops, device)
    strategy = make_strategy(cfg, world, device)
    strategy.setup(model, param_groups(model, stage.freeze, cfg.lr, cfg.weight_decay))

    start_step, consumed_micro = 0, 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = strategy.load(Path(d))
        start_step, consumed_micro = int(state["step"]), int(state["consumed_micro_batches"])
    if rank == 0:  # printed by the driver (vilaray.train.progress): workers' output stays in Ray's logs
        import vilaray

        info = {"vilaray": str(Path(vilaray.__file__).parent), "what_trains": format_table(report)}
        write_worker_info(Path(job.run_dir) / job.stage, info | {"resumed_from": start_step})

    # Streaming mode restarts its stream on resume; a new seed keeps it from replaying the same order.
    batches = iter(_batches(job, rank, world, consumed_micro, cfg.seed + start_step))
    run = RunInfo(Path(job.run_dir).name, job.stage, stage.model_dump(mode="json"), cfg.wandb)
    metrics = MetricsLog(Path(job.run_dir), run, enabled=rank == 0)
    sample_log = _sample_log(job, rank)
    validation = _validation_set(config.get("validation"), job, rank, world)
    evaluation = _training_eval(config.get("evaluation"), job, rank, world)
    step = start_step
    timer = StepTimer()
    last_step = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    held = None
    skipped, saved_at = 0, start_step
    nonfinite = NonFinitePolicy(
        cfg.on_nonfinite, cfg.max_nonfinite_skips, Path(job.run_dir) / job.stage, job.stage, rank
    )
    faults = Faults(
        FaultPlan(**job.faults), rank, world, Path(job.run_dir) / job.stage, Path(job.trainer_dir)
    )
    timer.start_wait()
    micro = _take(batches, cfg.grad_accum) if step < last_step else None
    timer.end_wait()
    while micro is not None:
        faults.maybe_sigkill(step + 1, saved_at)
        n_global = global_loss_tokens(micro, device)
        scale = step_scale(world, cfg.grad_accum, n_global)
        step_loss, by_source, trained = 0.0, {}, []
        pending = list(micro)
        while pending:
            mb = pending.pop(0)
            out = strategy.forward(**to_device(mb, device))
            loss_sum, sources = token_loss_sums(out.logits, mb["labels"].to(device), mb["sources"])
            if faults.nan_loss(step + 1):
                loss_sum = loss_sum * float("nan")
            if not _all_finite(loss_sum.detach(), device):
                # Every rank drops its micro-batch here (the flag is all-reduced) and takes the next one, so
                # the engine's accumulation boundary stays aligned; the step keeps its token denominator.
                skipped += 1
                nonfinite.handle(step + 1, mb, skipped)
                replacement = _take(batches, 1)
                if replacement is None:
                    break
                pending.append(replacement[0])
                consumed_micro += 1
                continue
            strategy.backward(loss_sum * scale)
            strategy.step()
            trained.append(mb)
            step_loss += float(loss_sum.detach()) / n_global
            add_source_sums(by_source, sources)
        if pending:
            break  # the stream ran dry while replacing a skipped micro-batch
        consumed_micro += cfg.grad_accum
        step += 1
        held = micro[0]
        if sample_log is not None:
            sample_log.write(
                json.dumps({"step": step, "ids": [i for mb in trained for i in mb["sample_ids"]]}) + "\n"
            )
            sample_log.flush()
        # The next step's data is fetched now, so this step knows whether it is the stage's last one (the
        # mixture can run dry before max_steps) and validates and checkpoints as the last step should.
        timer.start_wait()
        nxt = _take(batches, cfg.grad_accum) if step < last_step else None
        timer.end_wait()
        timer.end_step(
            sum(int(mb["num_tokens"].sum()) for mb in micro), sum(mb["input_ids"].numel() for mb in micro)
        )
        final = nxt is None
        row = {
            "loss": _mean_over_ranks(step_loss * n_global, n_global, device),
            "lr": strategy.lrs()[0],
            "grad_norm": strategy.grad_norm(),
            **mean_losses(reduce_by_source(by_source, device), "loss"),
            **timer.summary(world),
            "nonfinite_skipped": skipped,
            **_flops_metrics(sum(flop_model.batch_flops(mb) for mb in micro) * world, timer.seconds, peak),
        }
        checked = False
        for check, every in ((validation, stage.validation.every), (evaluation, stage.evaluation.every)):
            if check is not None and (step % every == 0 or final):
                t0 = time.perf_counter()
                row |= check.evaluate(strategy, device)
                timer.exclude(time.perf_counter() - t0)
                checked = True
        metrics.log(step, row)
        # Ray Train gets checkpoints and validation / benchmark scores (what Tune schedules on), not every
        # logged step: its controller takes one result per health-check poll (2 s) and a worker's next
        # report waits for it, which held a 0.25 s step to 0.4 s at a report every 5 steps.
        if step % cfg.checkpoint_every == 0 or final:
            _checkpoint(strategy, step, consumed_micro, row)
            saved_at = step
        elif checked:
            ray.train.report({"step": step, **row})
        micro = nxt
    metrics.close()
    if step < cfg.max_steps and step == last_step:
        return  # stopped at stop_at_step: the checkpoint above is where the next submission resumes
    if step > saved_at:  # the stream ran dry while replacing a skipped micro-batch: keep the last step
        _checkpoint(strategy, step, consumed_micro, {"loss": float("nan")})
    _export(strategy, built, job, rank)
    if cfg.verify_export and held is not None:
        _verify_export(strategy, job, held, device, rank)


def _validation_set(ref, job: StageJob, rank: int, world: int):
    """The held-out rows the driver built (an object ref), as this rank's share; None when disabled."""
    if ref is None or not job.config.validation.every:
        return None
    import ray

    from vilaray.train.validation import ValidationSet

    mb = job.config.train.micro_batch_size
    return ValidationSet(ray.get(ref), mb, rank, world, job.pad_id, job.image_size)


def _training_eval(ref, job: StageJob, rank: int, world: int):
    """The benchmark prompts the driver encoded (an object ref), as this rank's share; None when disabled."""
    if ref is None or not job.config.evaluation.every:
        return None
    import ray

    from vilaray.train.evaluation import TrainingEval

    batch = job.config.evaluation.batch_size
    return TrainingEval(ray.get(ref), rank, world, batch, job.pad_id, job.image_size)


def _flops_metrics(flops: float, seconds: float, peak: float | None) -> dict[str, float]:
    """Model TFLOP/s (this rank's batch FLOPs x ranks) and MFU against `peak` (see vilaray.train.flops)."""
    if seconds <= 0:
        return {}
    tflops = flops / seconds / 1e12
    return {"model_tflops": tflops} | ({"mfu": tflops / peak} if peak else {})


def _quiet_report_logging() -> None:
    """Ray Train logs every `report` call's full metrics at INFO; the progress line already says it."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: keep its logging as is
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _take(batches, n: int) -> list[dict] | None:
    out = []
    for _ in range(n):
        try:
            out.append(next(batches))
        except StopIteration:
            return None
    return out


def _mean_over_ranks(loss_sum: float, n_global: int, device: torch.device) -> float:
    t = torch.tensor([loss_sum], device=device, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t)
    return float(t.item()) / max(1, n_global)


def _sample_log(job: StageJob, rank: int):
    if not job.record_sample_ids:
        return None
    path = Path(job.run_dir) / job.stage / "samples" / f"rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a")


def _checkpoint(strategy, step: int, consumed_micro: int, row: dict) -> None:
    """Every rank writes its part of the engine state into one directory and reports it; Ray Train only
    registers the checkpoint once all ranks have, so a write that dies leaves the previous one loadable."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="vilaray-ckpt-") as tmp:
        strategy.save(Path(tmp), {"step": step, "consumed_micro_batches": consumed_micro})
        ray.train.report({"step": step, **row}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _export(strategy, built, job: StageJob, rank: int) -> None:
    """Consolidate the weights (a collective under ZeRO-3) and write the transformers-format export."""
    from vilaray.model.export import export

    state = strategy.full_state_dict()
    if rank == 0:
        fresh, _ = build_for_stage(job)
        fresh.model.load_state_dict(state)
        export(fresh.model, fresh.tokenizer, job.export_dir)
        prov = Path(job.run_dir) / job.stage / "provenance.json"
        if prov.is_file():
            (Path(job.export_dir) / "provenance.json").write_text(prov.read_text())
    if dist.is_initialized():
        dist.barrier()


def _verify_export(strategy, job: StageJob, batch: dict, device: torch.device, rank: int) -> None:
    """The export, reloaded by transformers, must give the engine's logits on a training batch."""
    from transformers import AutoModelForImageTextToText

    module = strategy.module
    module.eval()
    with torch.no_grad():
        engine_logits = strategy.forward(**to_device(batch, device)).logits.float().cpu()
    if rank == 0:
        exported = AutoModelForImageTextToText.from_pretrained(job.export_dir).eval()
        pixels = batch["pixel_values"]
        pixels = module.to_model_pixels(pixels).to(exported.dtype).cpu() if pixels.shape[0] else None
        with torch.no_grad():
            ref = exported(
                input_ids=batch["input_ids"],
                pixel_values=pixels,
                position_ids=batch["position_ids"],
                use_cache=False,
            ).logits.float()
        diff = float((ref - engine_logits).abs().max())
        tol = job.config.train.export_tolerance
        report = {"max_abs_logit_diff": diff, "tolerance": tol, "ok": diff <= tol}
        (Path(job.run_dir) / job.stage / "export_check.json").write_text(json.dumps(report, indent=2))
        if diff > tol:
            raise RuntimeError(
                f"export {job.export_dir} disagrees with training: max |logit diff| {diff} > {tol}"
            )
    if dist.is_initialized():
        dist.barrier()


def _write_pid(job: StageJob, rank: int) -> None:
    """Each rank's pid, so operators (and the fault-injection test) can find a worker."""
    import os

    path = Path(job.run_dir) / job.stage / "pids" / f"rank{rank}.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(os.getpid()))
