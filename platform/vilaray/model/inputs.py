"""Collated batch -> model inputs on a device (images normalised there, not in the data workers)."""

from __future__ import annotations

import torch


def pixels_to_model(
    pixels: torch.Tensor, mean: list[float], std: list[float], dtype: torch.dtype
) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised [N, 3, H, W] in `dtype`, computed on the tensor's device."""
    x = pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(dtype)


def shifted_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position next-token loss [B, T-1] (0 where the target is ignored)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the positions whose next token carries loss (the last position predicts nothing)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def selected_token_losses(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`shifted_token_losses` from the logits of the `keep` positions only ([N, V], in row-major order of
    `keep`): [B, T-1] in float32, 0 where the target is ignored."""
    shifted = keep[:, :-1]
    losses = torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][shifted], reduction="none")
    return losses.new_zeros(shifted.shape).masked_scatter(shifted, losses)


def per_sample_losses(
    logits: torch.Tensor, labels: torch.Tensor, seq_lens: list[list[int]]
) -> list[list[float]]:
    """Mean loss of each packed sample, from its own tokens only (rows hold several samples back to back)."""
    tok = shifted_token_losses(logits, labels)
    valid = labels[:, 1:] != -100
    out: list[list[float]] = []
    for b, lens in enumerate(seq_lens):
        row, start = [], 0
        for n in lens:
            # Targets of sample tokens [start+1, start+n) live at shifted positions [start, start+n-1).
            sl = slice(start, start + n - 1)
            count = valid[b, sl].sum()
            row.append(float(tok[b, sl].sum() / count) if count else float("nan"))
            start += n
        out.append(row)
    return out
