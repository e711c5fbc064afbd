"""Loss as a global mean over loss-bearing tokens, across micro-batches and data-parallel ranks."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from vilaray.model.inputs import shifted_token_losses


def global_loss_tokens(micro_batches: list[dict], device: torch.device) -> int:
    """Loss-bearing tokens in this optimizer step on all ranks (packed rows differ in how many they hold)."""
    n = torch.tensor([sum(int(mb["num_loss_tokens"].sum()) for mb in micro_batches)], device=device)
    if dist.is_initialized():
        dist.all_reduce(n)
    return int(n.item())


def step_scale(world_size: int, grad_accum: int, n_global: int) -> float:
    """DeepSpeed divides by grad_accum in backward and averages gradients over ranks; multiplying a
    micro-batch's loss sum by this makes the step's gradient that of sum(all token losses) / n_global."""
    return world_size * grad_accum / max(1, n_global)


def token_loss_sums(
    logits: torch.Tensor, labels: torch.Tensor, sources: list[str]
) -> tuple[torch.Tensor, dict]:
    """Sum of next-token losses (a scalar with grad) and per-source (sum, count) for logging."""
    tok = shifted_token_losses(logits, labels)
    valid = labels[:, 1:] != -100
    per_row = tok.sum(dim=1)
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


def reduce_by_source(by_source: dict[str, list], device: torch.device) -> dict[str, tuple[float, int]]:
    """Per-source (loss sum, token count) summed over all ranks. Source names are gathered first so every
    rank reduces the same vector even when its batches came from different sources."""
    names = sorted(by_source)
    if dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, names)
        names = sorted({n for g in gathered for n in g})
    vec = torch.tensor(
        [[by_source.get(n, [0.0, 0])[0], by_source.get(n, [0.0, 0])[1]] for n in names],
        dtype=torch.float64,
        device=device,
    )
    if dist.is_initialized() and len(names):
        dist.all_reduce(vec)
    return {n: (float(vec[i, 0]), int(vec[i, 1])) for i, n in enumerate(names)}


def mean_losses(sums: dict[str, tuple[float, int]], prefix: str) -> dict[str, float]:
    """`{prefix}/{source}` -> mean token loss (NaN for a source with no loss tokens)."""
    return {f"{prefix}/{n}": total / count if count else math.nan for n, (total, count) in sums.items()}
