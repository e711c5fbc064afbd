"""One stage on one rank, as a trainer object: steps, the NaN policy, validation, benchmarks, checkpoints.

The launcher (Ray Train, or one local process) is injected as a `TrainContext`, and the collectives are the
strategy's, so everything here runs in a single process as it does on a cluster.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from vilaray.train.batches import to_device
from vilaray.train.context import TrainContext
from vilaray.train.faults import FaultPlan, Faults
from vilaray.train.flops import FlopModel, peak_tflops
from vilaray.train.loss import add_source_sums, mean_losses, step_scale, token_loss_sums
from vilaray.train.metrics import MetricsLog, RunInfo, StepTimer
from vilaray.train.progress import write_worker_info
from vilaray.train.stage_job import StageJob, build_for_stage, export_stage, verify_export

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


class Trainer:
    """torchtitan's shape: `train()` runs `train_step()` and the `maybe_*` hooks until the stage's last step
    (or `stop_at_step`), then `finish()` checkpoints what is left and exports.

    `validation` and `evaluation` are the driver-built held-out rows (a pyarrow table) and benchmark bundle,
    or None. Resume accounting: a checkpoint holds the step and the micro-batches consumed, so a resumed
    run (deterministic data) starts on exactly the rows that follow."""

    def __init__(self, job: StageJob, ctx: TrainContext, validation=None, evaluation=None):
        from vilaray.model.freeze import format_table, param_groups
        from vilaray.train.strategy import make_strategy

        self.job, self.ctx = job, ctx
        self.stage = stage = job.config
        self.cfg = cfg = stage.train
        self.stage_dir = Path(job.run_dir) / job.stage
        torch.manual_seed(cfg.seed)

        self.built, report = build_for_stage(job)
        model = self.built.model
        if cfg.activation_checkpointing:
            model.gradient_checkpointing_enable()
        self._write_pid()
        # Counted before the engine exists: ZeRO-3 partitions parameters (numel 0 on a rank) at setup.
        self.flop_model = FlopModel.of(model)
        self.peak = peak_tflops(cfg.peak_tflops, ctx.device)
        self.strategy = make_strategy(cfg, ctx.world_size, ctx.device)
        self.strategy.setup(model, param_groups(model, stage.freeze, cfg.lr, cfg.weight_decay))

        self.step, self.consumed_micro = 0, 0
        with ctx.resume_dir() as d:
            if d is not None:
                state = self.strategy.load(d)
                self.step, self.consumed_micro = int(state["step"]), int(state["consumed_micro_batches"])
        # Printed by the driver (vilaray.train.progress): workers' output stays in Ray's logs.
        if ctx.rank == 0:
            import vilaray

            info = {"vilaray": str(Path(vilaray.__file__).parent), "what_trains": format_table(report)}
            write_worker_info(self.stage_dir, info | {"resumed_from": self.step})

        # Streaming mode restarts its stream on resume; a new seed keeps it from replaying the same order.
        self.batches = iter(self._batches(cfg.seed + self.step))
        run = RunInfo(Path(job.run_dir).name, job.stage, stage.model_dump(mode="json"), cfg.wandb)
        self.metrics = MetricsLog(Path(job.run_dir), run, enabled=ctx.rank == 0)
        self.sample_log = self._sample_log()
        self.validation = self._validation_set(validation)
        self.evaluation = self._training_eval(evaluation)
        self.timer = StepTimer()
        self.last_step = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
        self.held: dict | None = None  # a trained micro-batch, for the export check
        self.skipped, self.saved_at = 0, self.step
        self.nonfinite = NonFinitePolicy(
            cfg.on_nonfinite, cfg.max_nonfinite_skips, self.stage_dir, job.stage, ctx.rank
        )
        self.faults = Faults(
            FaultPlan(**job.faults), ctx.rank, ctx.world_size, self.stage_dir, Path(job.trainer_dir)
        )
        self.micro = self._next_micro()

    # -- the loop ---------------------------------------------------------------------------------------

    def train(self) -> None:
        while self.micro is not None:
            row = self.train_step()
            if row is None:
                break  # the stream ran dry while replacing a skipped micro-batch
            checked = self.maybe_validate(row)
            checked = self.maybe_evaluate(row) or checked
            self.metrics.log(self.step, row)
            self.maybe_checkpoint(row, checked)
        self.finish()

    @property
    def final(self) -> bool:
        """This step is the stage's last: max_steps, stop_at_step, or the mixture ran dry."""
        return self.micro is None

    def train_step(self) -> dict | None:
        """One optimizer step over the current micro-batches: this step's metrics row, or None when the
        stream ran dry while replacing a skipped micro-batch."""
        cfg, micro, strategy, device = self.cfg, self.micro, self.strategy, self.ctx.device
        self.faults.maybe_sigkill(self.step + 1, self.saved_at)
        n_global = strategy.loss_tokens(micro)
        scale = step_scale(self.ctx.world_size, cfg.grad_accum, n_global)
        step_loss, by_source, trained = 0.0, {}, []
        pending = list(micro)
        while pending:
            mb = pending.pop(0)
            labels = mb["labels"].to(device)
            out = strategy.forward(**to_device(mb, device), labels=labels)
            loss_sum, sources = token_loss_sums(out.token_losses, labels, mb["sources"])
            if self.faults.nan_loss(self.step + 1):
                loss_sum = loss_sum * float("nan")
            if not strategy.all_finite(loss_sum.detach()):
                # Every rank drops its micro-batch here (the flag is all-reduced) and takes the next one, so
                # the engine's accumulation boundary stays aligned; the step keeps its token denominator.
                self.skipped += 1
                self.nonfinite.handle(self.step + 1, mb, self.skipped)
                replacement = self._take(1)
                if replacement is None:
                    return None
                pending.append(replacement[0])
                self.consumed_micro += 1
                continue
            strategy.backward(loss_sum * scale)
            strategy.step()
            trained.append(mb)
            step_loss += float(loss_sum.detach()) / n_global
            add_source_sums(by_source, sources)
        self.consumed_micro += cfg.grad_accum
        self.step += 1
        self.held = micro[0]
        self._log_samples(trained)
        # The next step's data is fetched now, so this step knows whether it is the stage's last one (the
        # mixture can run dry before max_steps) and validates and checkpoints as the last step should.
        self.micro = self._next_micro()
        self.timer.end_step(
            sum(int(mb["num_tokens"].sum()) for mb in micro), sum(mb["input_ids"].numel() for mb in micro)
        )
        flops = sum(self.flop_model.batch_flops(mb) for mb in micro) * self.ctx.world_size
        return {
            "loss": strategy.sum_over_ranks([step_loss * n_global])[0] / max(1, n_global),
            "lr": strategy.lrs()[0],
            "grad_norm": strategy.grad_norm(),
            **mean_losses(strategy.reduce_by_source(by_source), "loss"),
            **self.timer.summary(self.ctx.world_size),
            "nonfinite_skipped": self.skipped,
            **_flops_metrics(flops, self.timer.seconds, self.peak),
        }

    def maybe_validate(self, row: dict) -> bool:
        return self._maybe_check(self.validation, self.stage.validation.every, row)

    def maybe_evaluate(self, row: dict) -> bool:
        return self._maybe_check(self.evaluation, self.stage.evaluation.every, row)

    def maybe_checkpoint(self, row: dict, checked: bool) -> None:
        """Checkpoint every `checkpoint_every` steps and at the last. The launcher gets checkpoints and the
        steps that validated or ran benchmarks (what Tune schedules on), not every logged step: Ray Train's
        controller takes one result per health-check poll and a worker's next report waits for it."""
        if self.step % self.cfg.checkpoint_every == 0 or self.final:
            self._checkpoint(row)
        elif checked:
            self.ctx.report({"step": self.step, **row})

    def finish(self) -> None:
        """After the loop: nothing more when stopped at `stop_at_step` (its checkpoint is where the next
        submission resumes); otherwise keep the last step and export (and check the export)."""
        self.metrics.close()
        if self.step < self.cfg.max_steps and self.step == self.last_step:
            return
        if self.step > self.saved_at:  # the stream ran dry while replacing a skipped micro-batch
            self._checkpoint({"loss": float("nan")})
        export_stage(self.strategy, self.job, self.ctx.rank)
        if self.cfg.verify_export and self.held is not None:
            verify_export(self.strategy, self.job, self.held, self.ctx.device, self.ctx.rank)

    # -- pieces -----------------------------------------------------------------------------------------

    def _maybe_check(self, check, every: int, row: dict) -> bool:
        if check is None or not (self.step % every == 0 or self.final):
            return False
        t0 = time.perf_counter()
        row |= check.evaluate(self.strategy, self.ctx.device)
        self.timer.exclude(time.perf_counter() - t0)
        return True

    def _checkpoint(self, row: dict) -> None:
        """Every rank writes its part of the engine state into one directory and reports it; Ray Train only
        registers the checkpoint once all ranks have, so a write that dies leaves the previous one loadable."""
        with tempfile.TemporaryDirectory(prefix="vilaray-ckpt-") as tmp:
            state = {"step": self.step, "consumed_micro_batches": self.consumed_micro}
            self.strategy.save(Path(tmp), state)
            self.ctx.report({"step": self.step, **row}, checkpoint=Path(tmp))
        self.saved_at = self.step

    def _batches(self, seed: int):
        from vilaray.train.batches import deterministic_batches, streaming_batches

        job, cfg = self.job, self.cfg
        if cfg.data_mode == "deterministic":
            shards = [Path(p) for p in job.prepared_shards or []]
            return deterministic_batches(
                shards, self.ctx.rank, self.ctx.world_size, cfg.micro_batch_size, self.consumed_micro,
                job.pad_id, job.image_size,
            )  # fmt: skip
        return streaming_batches(
            cfg.micro_batch_size, job.pad_id, job.image_size, self.stage.data.local_shuffle_buffer, seed
        )

    def _take(self, n: int) -> list[dict] | None:
        out = []
        for _ in range(n):
            try:
                out.append(next(self.batches))
            except StopIteration:
                return None
        return out

    def _next_micro(self) -> list[dict] | None:
        self.timer.start_wait()
        micro = self._take(self.cfg.grad_accum) if self.step < self.last_step else None
        self.timer.end_wait()
        return micro

    def _validation_set(self, table):
        if table is None or not self.stage.validation.every:
            return None
        from vilaray.train.validation import ValidationSet

        mb, ctx = self.cfg.micro_batch_size, self.ctx
        return ValidationSet(table, mb, ctx.rank, ctx.world_size, self.job.pad_id, self.job.image_size)

    def _training_eval(self, bundle):
        if bundle is None or not self.stage.evaluation.every:
            return None
        from vilaray.train.evaluation import TrainingEval

        batch, ctx = self.stage.evaluation.batch_size, self.ctx
        return TrainingEval(bundle, ctx.rank, ctx.world_size, batch, self.job.pad_id, self.job.image_size)

    def _sample_log(self):
        if not self.job.record_sample_ids:
            return None
        path = self.stage_dir / "samples" / f"rank{self.ctx.rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a")

    def _log_samples(self, trained: list[dict]) -> None:
        if self.sample_log is not None:
            ids = [i for mb in trained for i in mb["sample_ids"]]
            self.sample_log.write(json.dumps({"step": self.step, "ids": ids}) + "\n")
            self.sample_log.flush()

    def _write_pid(self) -> None:
        """Each rank's pid, so operators (and the fault-injection test) can find a worker."""
        import os

        path = self.stage_dir / "pids" / f"rank{self.ctx.rank}.pid"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(os.getpid()))


def _flops_metrics(flops: float, seconds: float, peak: float | None) -> dict[str, float]:
    """Model TFLOP/s (this rank's batch FLOPs x ranks) and MFU against `peak` (see vilaray.train.flops)."""
    if seconds <= 0:
        return {}
    tflops = flops / seconds / 1e12
    return {"model_tflops": tflops} | ({"mfu": tflops / peak} if peak else {})
