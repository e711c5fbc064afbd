"""Loss as a global mean over loss-bearing tokens, across micro-batches and data-parallel ranks (the ranks'
sums are the strategy's collectives)."""

from __future__ import annotations

import math

import torch


def step_scale(world_size: int, grad_accum: int, n_global: int) -> float:
    """DeepSpeed divides by grad_accum in backward and averages gradients over ranks; multiplying a
    micro-batch's loss sum by this makes the step's gradient that of sum(all token losses) / n_global."""
    return world_size * grad_accum / max(1, n_global)


def token_loss_sums(
    token_losses: torch.Tensor, labels: torch.Tensor, sources: list[str]
) -> tuple[torch.Tensor, dict]:
    """Sum of next-token losses (a scalar with grad) and per-source (sum, count) for logging, from the
    model's [B, T-1] `token_losses` (its forward given the labels)."""
    valid = labels[:, 1:] != -100
    per_row = token_losses.sum(dim=1)
    counts = valid.sum(dim=1)
    by_source: dict[str, list[float]] = {}
    for i, source in enumerate(sources):
        acc = by_source.setdefault(source, [0.0, 0])
        acc[0] += float(per_row[i].detach())
        acc[1] += int(counts[i])
    return per_row.sum(), by_source


def add_source_sums(into: dict[str, list], by_source: dict) -> None:
    """Accumulate per-source (loss sum, token count) pairs, as token_loss_sums returns them."""
    for source, (total, count) in by_source.items():
        acc = into.setdefault(source, [0.0, 0])
        acc[0] += total
        acc[1] += count


def mean_losses(sums: dict[str, tuple[float, int]], prefix: str) -> dict[str, float]:
    """`{prefix}/{source}` -> mean token loss (NaN for a source with no loss tokens)."""
    return {f"{prefix}/{n}": total / count if count else math.nan for n, (total, count) in sums.items()}
