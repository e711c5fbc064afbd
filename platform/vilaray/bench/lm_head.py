"""LM-head benchmark: forward+backward with the LM head and loss on the loss-bearing positions only (what
training runs) against the full [B, T, V] logits, on the same VLM and packed rows, with the losses compared."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from vilaray.bench import Benchmark, register
from vilaray.bench.attention import PackedRowsConfig, Variant, VariantsReport, loss_failures, run_variants
from vilaray.model.packed_attention import PACKED_SDPA

FULL, LOSS_POSITIONS = "full logits", "loss positions"


@dataclass(frozen=True)
class LMHeadBenchConfig(PackedRowsConfig):
    """Options of `jobs/benchmark.py lm-head`; every field is a `--flag` of the same name."""

    attn: str = field(default=PACKED_SDPA, metadata={"help": "attention implementation of both variants"})
    prompt_share: float = field(
        default=0.6,
        metadata={"help": "leading share of each document's text tokens without loss (prompts, as in SFT)"},
    )
    floor: float = field(
        default=1.0, metadata={"help": f"{LOSS_POSITIONS} on packed rows / {FULL} speed floor"}
    )


def run_lm_head_benchmark(cfg: LMHeadBenchConfig) -> VariantsReport:
    if not 0.0 <= cfg.prompt_share < 1.0:
        raise ValueError(f"--prompt-share: {cfg.prompt_share} is not in [0, 1)")
    variants = [Variant(FULL, cfg.attn, loss_positions=False), Variant(LOSS_POSITIONS, cfg.attn)]
    return run_variants("LM-head", cfg, variants, check, lambda b: prompt_labels(b, cfg.prompt_share))


def prompt_labels(batch: dict, share: float) -> torch.Tensor:
    """The batch's labels with the first `share` of every document's tokens ignored, the way a chat
    template masks prompts: what decides how many positions the LM head must score."""
    labels, pos = batch["labels"].clone(), batch["position_ids"]
    for r in range(pos.shape[0]):
        starts = (pos[r] == 0).nonzero().flatten().tolist() + [pos.shape[1]]
        for a, b in itertools.pairwise(starts):
            labels[r, a : a + int(share * (b - a))] = -100
    return labels


def check(cfg: LMHeadBenchConfig, report: VariantsReport) -> list[str]:
    failures = loss_failures(cfg, report)
    for m in report.results:
        if m.variant == LOSS_POSITIONS and m.packing and report.speedup(m) < cfg.floor:
            failures.append(
                f"{LOSS_POSITIONS} on packed rows at {report.speedup(m):.2f}x, below {cfg.floor}x"
            )
    return failures


register(
    Benchmark(
        name="lm-head",
        summary="forward+backward step time with the LM head and loss on the loss-bearing positions only, "
        "against the full logits, on the same packed rows, with their losses compared.",
        config=LMHeadBenchConfig,
        run=run_lm_head_benchmark,
        default_out="artifacts/bench/lm_head.json",
    )
)
