"""Attention benchmark: forward+backward of the same VLM and packed rows under each attention implementation,
against the first one named (transformers' masked sdpa by default), with the losses they give compared."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch

from vilaray.bench import Benchmark, register
from vilaray.bench.train import (
    SHAPES,
    Measured,
    Workload,
    _choice,
    _device_inputs,
    _loss_sum,
    bench_model,
    time_steps,
    world_doc_lengths,
)
from vilaray.model.packed_attention import PACKED_SDPA
from vilaray.train.flops import H100_BF16_TFLOPS


@dataclass(frozen=True)
class AttentionBenchConfig:
    """Options of `jobs/benchmark.py attention`; every field is a `--flag` of the same name."""

    shape: str = field(default="tiny", metadata={"help": f"model shape: {', '.join(SHAPES)}"})
    attn: str = field(
        default=f"sdpa,{PACKED_SDPA}",
        metadata={"help": "implementations, comma-separated; the first is the baseline"},
    )
    rows: int = field(default=2, metadata={"help": "rows per step (one image each)"})
    seq_len: int = field(default=1024, metadata={"help": "tokens per row"})
    steps: int = field(default=10, metadata={"help": "timed steps per implementation"})
    warmup: int = field(default=2, metadata={"help": "untimed steps first"})
    packing: str = field(
        default="on,off", metadata={"help": "on: shapes-world documents packed per row; off: one"}
    )
    loss_tolerance: float = field(
        default=1e-4, metadata={"help": "largest |loss - baseline loss| on the same batch"}
    )
    floor: float = field(
        default=1.0, metadata={"help": f"{PACKED_SDPA} on packed rows / baseline speed floor"}
    )
    lengths_root: str = field(
        default="artifacts/bench", metadata={"help": "cache of the world the lengths come from"}
    )
    seed: int = 0


@dataclass
class AttentionBenchReport:
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
            f"attention benchmark: {c['shape']}, {c['rows']} x {c['seq_len']} tokens, forward+backward, "
            f"device {self.device}; baseline {c['attn'].split(',')[0]}",
            f"{'attention':<18}{'packing':>8}{'step s':>10}{'tok/s':>11}{'vs base':>9}{'|dloss|':>10}",
        ]
        for m in self.results:
            diff = self.loss_diff[_key(m)]
            lines.append(
                f"{m.variant:<18}{'on' if m.packing else 'off':>8}{m.step_s:>10.4f}{m.tokens_per_s:>11.0f}"
                f"{self.speedup(m):>8.2f}x{diff:>10.1e}"
            )
        lines.extend(f"FAILED: {f}" for f in self.failures)
        return "\n".join(lines)


def _key(m: Measured) -> str:
    return f"{m.variant} packing {'on' if m.packing else 'off'}"


def measure(work: Workload, attn: str, packing: bool, device: torch.device) -> tuple[Measured, float]:
    """Median fwd+bwd step time of `attn` on the workload's batches, and the loss on the first batch."""
    torch.manual_seed(work.seed)
    model, _ = bench_model(work.shape, attn, torch.float32)
    model.to(device).train()
    batches = work.batches(model, packing)

    def step(batch: dict) -> float:
        loss_sum, n = _loss_sum(model(**_device_inputs(batch, device)), batch["labels"].to(device))
        (loss_sum / n).backward()
        model.zero_grad(set_to_none=True)
        return float(loss_sum.detach()) / n

    first = step(batches[0])
    return time_steps(attn, packing, work, model, batches, step, device), first


def run_attention_benchmark(cfg: AttentionBenchConfig) -> AttentionBenchReport:
    if cfg.shape not in SHAPES:
        raise ValueError(f"--shape: unknown shape {cfg.shape!r}; expected one of {sorted(SHAPES)}")
    names = [a.strip() for a in cfg.attn.split(",") if a.strip()]
    if not names:
        raise ValueError("--attn: name at least one attention implementation")
    packing = [_choice("packing", p, {"on": True, "off": False}) for p in cfg.packing.split(",")]
    work = Workload(SHAPES[cfg.shape](), names[0], cfg.rows, cfg.seq_len, cfg.steps, cfg.warmup,
                    world_doc_lengths(cfg.lengths_root, cfg.seed), H100_BF16_TFLOPS, cfg.seed)  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results, losses = [], {}
    for p in packing:
        for attn in names:
            m, loss = measure(work, attn, p, device)
            results.append(m)
            losses[_key(m)] = loss
    report = AttentionBenchReport(
        asdict(cfg),
        torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        results,
        {},
    )
    for m in results:
        report.loss_diff[_key(m)] = abs(losses[_key(m)] - losses[_key(report.baseline(m.packing))])
    report.failures = check(cfg, report)
    return report


def check(cfg: AttentionBenchConfig, report: AttentionBenchReport) -> list[str]:
    failures = [
        f"{key}: loss differs from the baseline's by {diff:.2e} > {cfg.loss_tolerance}"
        for key, diff in report.loss_diff.items()
        if diff > cfg.loss_tolerance
    ]
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
