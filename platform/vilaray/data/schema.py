"""Explicit Arrow schemas shared by every source, so `Dataset.mix` can combine them."""

from __future__ import annotations

import pyarrow as pa

PART = pa.struct([("text", pa.string()), ("image", pa.binary())])

CANONICAL = pa.schema(
    [
        ("source", pa.string()),
        ("id", pa.string()),
        ("kind", pa.string()),
        ("segments", pa.list_(PART)),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(PART))]))),
    ]
)

# One tokenized sample (before packing). Images are uint8 HxWx3 at the tower's resolution, one binary each.
TOKENIZED = pa.schema(
    [
        ("source", pa.string()),
        ("id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("images", pa.list_(pa.binary())),
        ("num_tokens", pa.int32()),
        ("num_loss_tokens", pa.int32()),
    ]
)

# A training row: one or more samples (packed) padded to the token budget, or one sample (unpacked).
ROW = pa.schema(
    [
        ("source", pa.string()),
        ("sample_ids", pa.list_(pa.string())),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("position_ids", pa.list_(pa.int32())),
        ("seq_lens", pa.list_(pa.int32())),
        ("images", pa.list_(pa.binary())),
        ("num_tokens", pa.int32()),
        ("num_loss_tokens", pa.int32()),
    ]
)
