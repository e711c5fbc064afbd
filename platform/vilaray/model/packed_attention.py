"""Packed-row attention for the LLM: causal attention within each packed document only, as varlen kernels do.

A packed row holds several documents whose position ids restart at 0. transformers' `sdpa` turns that into
a [T, T] block-diagonal mask and still computes all T x T scores; on a CPU that was 57% of a tiny-recipe
step (1024-token rows of ~100-token documents). `packed_sdpa` runs SDPA on each document's block instead
(what flash-attention's varlen kernels do on a GPU), so the cost follows the documents' lengths. Without
segment boundaries (generation, a KV cache, unpacked rows) it is plain `sdpa`, mask and all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

PACKED_SDPA = "packed_sdpa"


def segment_bounds(position_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative sequence lengths over the flattened [B*T] batch (flash-attention's `cu_seq_lens`): a
    document starts at each row's first token and wherever a position id does not follow the previous
    one, the rule transformers' packed-sequence detection uses."""
    b, t = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    flat = starts.flatten().nonzero().flatten()
    end = torch.tensor([b * t], dtype=flat.dtype, device=flat.device)
    return torch.cat([flat, end]).to(torch.int32)


def packed_kwargs(position_ids: torch.Tensor | None) -> dict:
    """The kwarg a forward passes down to `packed_sdpa`: the documents' bounds, under the name transformers'
    flash-attention path uses for them."""
    return {} if position_ids is None else {"cu_seq_lens_q": segment_bounds(position_ids)}


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    cu = kwargs.get("cu_seq_lens_q")
    b, _, t, _ = query.shape
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if cu is None or key.shape[2] != t or not causal:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
            **kwargs,
        )  # fmt: skip
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    bounds = cu.tolist()
    lengths: list[list[int]] = [[] for _ in range(b)]
    for start, end in zip(bounds[:-1], bounds[1:]):
        lengths[start // t].append(end - start)
    # unbind/split rather than slicing: their backward is one stack/cat, not a zero-filled copy per document.
    rows = []
    for q, k, v, lens in zip(query.unbind(0), key.unbind(0), value.unbind(0), lengths):
        docs = zip(q.split(lens, dim=1), k.split(lens, dim=1), v.split(lens, dim=1))
        rows.append(
            torch.cat(
                [
                    F.scaled_dot_product_attention(
                        qd, kd, vd, dropout_p=dropout, scale=scaling, is_causal=True
                    )
                    for qd, kd, vd in docs
                ],
                dim=1,
            )
        )
    out = torch.stack(rows)  # [B, H, T, D]
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
# Masks as sdpa builds them: the fallback path (generation, padded batches) needs them.
ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, sdpa_mask)
