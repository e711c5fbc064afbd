"""Where a worker's micro-batches come from: a Ray Data stream, or prepared shards read in a fixed order."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from vilaray.data.collate import collate_rows

ROW_COLUMNS = [
    "source",
    "sample_ids",
    "input_ids",
    "labels",
    "position_ids",
    "images",
    "num_tokens",
    "num_loss_tokens",
]


def streaming_batches(
    micro_batch: int, pad_id: int, image_size: int, shuffle_buffer: int, seed: int
) -> Iterator[dict]:
    """This rank's share of the Ray Data mixture (equal-sized shards, so every rank runs the same steps).

    On resume the stream restarts from the beginning with a new shuffle seed: streaming mode does not
    promise exact resumption (deterministic mode does)."""
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    yield from shard.iter_torch_batches(
        batch_size=micro_batch,
        collate_fn=functools.partial(collate_rows, pad_id=pad_id, image_size=image_size),
        local_shuffle_buffer_size=shuffle_buffer or None,
        local_shuffle_seed=seed if shuffle_buffer else None,
        drop_last=True,
    )


def prepared_row_order(shards: list[Path]) -> list[tuple[int, int]]:
    """(shard index, row) for every prepared row, in the order prepare_data wrote them."""
    return [(i, r) for i, p in enumerate(shards) for r in range(pq.ParquetFile(p).metadata.num_rows)]


def deterministic_batches(
    shards: list[Path],
    rank: int,
    world: int,
    micro_batch: int,
    skip_micro_batches: int,
    pad_id: int,
    image_size: int,
) -> Iterator[dict]:
    """Micro-batch k of the whole run is global rows [k*world*mb, (k+1)*world*mb); rank r takes its slice.

    Resuming after N micro-batches skips exactly the rows those consumed, so a resumed run trains on the
    same sample ids a straight run would."""
    order = prepared_row_order(shards)
    per_step = world * micro_batch
    usable = len(order) // per_step
    tables: dict[int, object] = {}
    for k in range(skip_micro_batches, usable):
        rows = order[k * per_step + rank * micro_batch : k * per_step + (rank + 1) * micro_batch]
        records = []
        for shard_idx, row in rows:
            if shard_idx not in tables:
                tables[shard_idx] = pq.read_table(shards[shard_idx], columns=ROW_COLUMNS)
            records.append(tables[shard_idx].slice(row, 1).to_pylist()[0])
        yield collate_records(records, pad_id, image_size)


def collate_records(records: list[dict], pad_id: int, image_size: int) -> dict:
    """Training rows as Python dicts (schema.ROW) -> one micro-batch, the way Ray Data batches collate."""
    arrays = {c: _object_array([rec[c] for rec in records]) for c in ROW_COLUMNS}
    return collate_rows(arrays, pad_id=pad_id, image_size=image_size)


def _object_array(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = np.asarray(v) if isinstance(v, list) and v and isinstance(v[0], int) else v
    return out


def to_device(mb: dict, device: torch.device) -> dict:
    """A micro-batch's model inputs on `device` (provenance and labels stay where they are)."""
    return {
        "input_ids": mb["input_ids"].to(device),
        "position_ids": mb["position_ids"].to(device),
        "pixel_values": mb["pixel_values"].to(device) if mb["pixel_values"].shape[0] else None,
        "image_counts": mb["image_counts"].to(device),
    }
