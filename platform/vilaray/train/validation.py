"""Held-out validation loss: each source's held-out rows built once on the driver, scored on every rank."""

from __future__ import annotations

import math
import time

import pyarrow as pa
import torch

from vilaray.data import schema
from vilaray.data.arrow import rows_to_table
from vilaray.data.pipeline import PlannedData, SourceEncoder
from vilaray.train.lockstep import deal, evaluating
from vilaray.train.loss import add_source_sums, mean_losses, token_loss_sums


def build_validation_rows(planned: PlannedData, rows_per_source: int) -> tuple[pa.Table, dict]:
    """Up to `rows_per_source` packed rows of every source's held-out samples (`data.holdout`), read in plan
    order and encoded and packed by the training pipeline's own code; plus what was found per source.

    Runs on the driver: the rows are small and identical for every rank, so they travel as one object."""
    held_out = planned.split("validation")
    source = SourceEncoder.local(held_out.spec)
    rows, found = [], {}
    for name, shards in held_out.plans.items():
        windows = source.packed_windows(source.samples(shards), held_out.config.pack_window)
        got: list[dict] = []
        while len(got) < rows_per_source and (packed := next(windows, None)) is not None:
            got += packed
        got = got[:rows_per_source]
        found[name] = {
            "rows": len(got),
            "samples": sum(len(r["sample_ids"]) for r in got),
            "loss_tokens": sum(r["num_loss_tokens"] for r in got),
        }
        rows += got
    return rows_to_table(rows, schema.ROW), found


class ValidationSet:
    """This rank's share of the held-out rows, as micro-batches drawn from one source each.

    Micro-batches are dealt round-robin over ranks and every rank runs the same number of forwards
    (ZeRO-3 gathers parameters in lockstep): a rank with one fewer repeats a batch and drops its losses."""

    def __init__(
        self, table: pa.Table, micro_batch: int, rank: int, world: int, pad_id: int, image_size: int
    ):
        from vilaray.train.batches import collate_records

        by_source: dict[str, list[dict]] = {}
        for rec in table.to_pylist():
            by_source.setdefault(rec["source"], []).append(rec)
        batches = [
            collate_records(recs[i : i + micro_batch], pad_id, image_size)
            for recs in by_source.values()
            for i in range(0, len(recs), micro_batch)
        ]
        self.mine, self.forwards = deal(batches, rank, world, 1)
        self.filler = batches[0] if batches else None

    def evaluate(self, strategy, device: torch.device) -> dict[str, float]:
        """`val_loss` (token mean over all held-out rows) and `val_loss/<source>`, the same on every rank."""
        if not self.forwards:
            return {}
        from vilaray.train.batches import to_device

        t0 = time.perf_counter()
        sums: dict[str, list] = {}
        with evaluating(strategy.module):
            for k in range(self.forwards):
                mb = self.mine[k] if k < len(self.mine) else self.filler
                labels = mb["labels"].to(device)
                out = strategy.forward(**to_device(mb, device), labels=labels)
                _, by_source = token_loss_sums(out.token_losses, labels, mb["sources"])
                if k < len(self.mine):  # a lockstep filler's losses are another rank's
                    add_source_sums(sums, by_source)
        reduced = strategy.reduce_by_source(sums)
        total = sum(t for t, _ in reduced.values())
        count = sum(c for _, c in reduced.values())
        return {
            "val_loss": total / count if count else math.nan,
            **mean_losses(reduced, "val_loss"),
            "val_time_s": time.perf_counter() - t0,
        }
