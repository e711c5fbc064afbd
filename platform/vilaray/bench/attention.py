"""Attention benchmark: forward+backward of the same VLM and packed rows under each attention implementation,
against the first one named (transformers' masked sdpa by default), with the losses they give compared; and
the machinery for timing any variants of that step on the same rows (the LM-head benchmark uses it)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import torch

from vilaray.bench import Benchmark, register
from vilaray.bench.steps import (
    SHAPES,
    Measured,
    Workload,
    announce,
    bench_loss_sum,
    bench_model,
    choice,
    device_inputs,
    time_steps,
    world_doc_lengths,
)
from vilaray.model.inputs import shifted_token_losses
from vilaray.model.packed_attention import PACKED_SDPA
from vilaray.train.flops import H100_BF16_TFLOPS


@dataclass(frozen=True)
class PackedRowsConfig:
    """Options shared by the benchmarks that time variants of one VLM step on the same packed rows."""

    shape: str = field(default="tiny", metadata={"help": f"model shape: {', '.join(SHAPES)}"})
    rows: int = field(default=2, metadata={"help": "rows per step (one image each)"})
    seq_len: int = field(default=1024, metadata={"help": "tokens per row"})
    steps: int = field(default=10, metadata={"help": "timed steps per variant"})
    warmup: int = field(default=2, metadata={"help": "untimed steps first"})
    packing: str = field(
        default="on,off", metadata={"help": "on: shapes-world documents packed per row; off: one"}
    )
    loss_tolerance: float = field(
        default=1e-4, metadata={"help": "largest |loss - baseline loss| on the same batch"}
    )
    lengths_root: str = field(
        default="artifacts/bench", metadata={"help": "cache of the world the lengths come from"}
    )
    seed: int = 0


@dataclass(frozen=True)
class AttentionBenchConfig(PackedRowsConfig):
    """Options of `jobs/benchmark.py attention`; every field is a `--flag` of the same name."""

    attn: str = field(
        default=f"sdpa,{PACKED_SDPA}",
        metadata={"help": "implementations, comma-separated; the first is the baseline"},
    )
    floor: float = field(
        default=1.0, metadata={"help": f"{PACKED_SDPA} on packed rows / baseline speed floor"}
    )


@dataclass(frozen=True)
class Variant:
    """One way of running the step: an attention implementation, and whether the LM head runs on the
    loss-bearing positions only (the model given its labels, as training runs it) or on every position."""

    name: str
    attn: str
    loss_positions: bool = True


@dataclass
class VariantsReport:
    """Variants of one step timed on the same rows; the first variant of each packing mode is the baseline."""

    title: str
    config: dict
    device: str
    results: list[Measured]
    loss_diff: dict[str, float]  # "<attn> packing on|off" -> |loss - baseline's| on the first batch
    failures: list[str] = field(default_factory=list)

    def baseline(self, packing: bool) -> Measured:
        return next(m for m in self.results if m.packing == packing)

    def speedup(self, m: Measured) -> float:
        return self.baseline(m.packing).step_s / m.step_s

    def to_dict(self) -> dict:
        rows = [asdict(m) | {"vs_baseline": self.speedup(m)} for m in self.results]
        return {"config": self.config, "device": self.device, "results": rows, "loss_diff": self.loss_diff,
                "failures": self.failures, "passed": not self.failures}  # fmt: skip

    def table(self) -> str:
        c = self.config
        lines = [
            f"{self.title} benchmark: {c['shape']}, {c['rows']} x {c['seq_len']} tokens, forward+backward, "
            f"device {self.device}; baseline {self.results[0].variant}",
            f"{'variant':<18}{'packing':>8}{'step s':>10}{'tok/s':>11}{'vs base':>9}{'|dloss|':>10}{'peak GB':>9}",
        ]
        for m in self.results:
            diff = self.loss_diff[_key(m)]
            peak = f"{m.peak_mem_gb:>9.2f}" if m.peak_mem_gb is not None else f"{'-':>9}"
            lines.append(
                f"{m.variant:<18}{'on' if m.packing else 'off':>8}{m.step_s:>10.4f}{m.tokens_per_s:>11.0f}"
                f"{self.speedup(m):>8.2f}x{diff:>10.1e}{peak}"
            )
        lines.extend(f"FAILED: {f}" for f in self.failures)
        return "\n".join(lines)


def _key(m: Measured) -> str:
    return f"{m.variant} packing {'on' if m.packing else 'off'}"


def measure(
    work: Workload, variant: Variant, packing: bool, device: torch.device, labels_fn=None
) -> tuple[Measured, float]:
    """Median fwd+bwd step time of `variant` on the workload's batches (their labels rewritten by
    `labels_fn(batch)` if given), and the loss on the first batch."""
    torch.manual_seed(work.seed)
    model, _ = bench_model(work.shape, variant.attn, torch.float32)
    model.to(device).train()
    batches = work.batches(model, packing)
    for batch in batches if labels_fn else []:
        batch["labels"] = labels_fn(batch)

    def step(batch: dict) -> float:
        labels = batch["labels"].to(device)
        if variant.loss_positions:
            loss_sum, n = bench_loss_sum(model(**device_inputs(batch, device), labels=labels), labels)
        else:
            logits = model(**device_inputs(batch, device)).logits
            loss_sum, n = shifted_token_losses(logits, labels).sum(), int((labels[:, 1:] != -100).sum())
        (loss_sum / n).backward()
        model.zero_grad(set_to_none=True)
        return float(loss_sum.detach()) / n

    first = step(batches[0])
    return time_steps(variant.name, packing, work, model, batches, step, device), first


def run_variants(
    title: str, cfg: PackedRowsConfig, variants: list[Variant], check, labels_fn=None
) -> VariantsReport:
    """Every variant on the same rows, packed and not; `check(cfg, report)` gives the failed floors."""
    shape = SHAPES.get(cfg.shape)
    packing = [choice("packing", p, {"on": True, "off": False}) for p in cfg.packing.split(",")]
    work = Workload(shape(), variants[0].attn, cfg.rows, cfg.seq_len, cfg.steps, cfg.warmup,
                    world_doc_lengths(cfg.lengths_root, cfg.seed), H100_BF16_TFLOPS, cfg.seed)  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results, losses, t0 = [], {}, time.perf_counter()
    for p in packing:
        for variant in variants:
            m, loss = measure(work, variant, p, device, labels_fn)
            announce(title.lower(), [m], t0)
            results.append(m)
            losses[_key(m)] = loss
    report = VariantsReport(
        title,
        asdict(cfg),
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        results,
        {},
    )
    for m in results:
        report.loss_diff[_key(m)] = abs(losses[_key(m)] - losses[_key(report.baseline(m.packing))])
    report.failures = check(cfg, report)
    return report


def loss_failures(cfg: PackedRowsConfig, report: VariantsReport) -> list[str]:
    return [
        f"{key}: loss differs from the baseline's by {diff:.2e} > {cfg.loss_tolerance}"
        for key, diff in report.loss_diff.items()
        if diff > cfg.loss_tolerance
    ]


def run_attention_benchmark(cfg: AttentionBenchConfig) -> VariantsReport:
    names = [a.strip() for a in cfg.attn.split(",") if a.strip()]
    if not names:
        raise ValueError("--attn: name at least one attention implementation")
    return run_variants("attention", cfg, [Variant(a, a) for a in names], check)


def check(cfg: AttentionBenchConfig, report: VariantsReport) -> list[str]:
    failures = loss_failures(cfg, report)
    for m in report.results:
        if m.variant == PACKED_SDPA and m.packing and report.speedup(m) < cfg.floor:
            failures.append(f"{PACKED_SDPA} on packed rows at {report.speedup(m):.2f}x, below {cfg.floor}x")
    return failures


register(
    Benchmark(
        name="attention",
        summary="forward+backward step time of attention implementations on the same packed rows, against "
        "the first named (sdpa: a dense block-diagonal mask), with their losses compared.",
        config=AttentionBenchConfig,
        run=run_attention_benchmark,
        default_out="artifacts/bench/attention.json",
    )
)
