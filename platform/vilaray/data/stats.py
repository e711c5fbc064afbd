"""Stream statistics measured on what a consumer actually receives: token shares, packing efficiency, counts."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow.compute as pc


def pc_list_lengths(column) -> list[int]:
    return pc.list_value_length(column).to_pylist()


@dataclass
class SourceTally:
    rows: int = 0
    samples: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    images: int = 0
    slots: int = 0  # token slots the rows occupy (padding included)


@dataclass
class StreamStats:
    """Accumulates per-source counts from collated batches or raw rows."""

    by_source: dict[str, SourceTally] = field(default_factory=lambda: defaultdict(SourceTally))

    def add_row(
        self, source: str, samples: int, tokens: int, loss_tokens: int, images: int, slots: int
    ) -> None:
        t = self.by_source[source]
        t.rows += 1
        t.samples += samples
        t.tokens += tokens
        t.loss_tokens += loss_tokens
        t.images += images
        t.slots += slots

    def add_batch(self, batch: dict) -> None:
        """A collated batch (see collate.py); slots are counted at the batch's padded length."""
        width = int(batch["input_ids"].shape[1])
        for i, source in enumerate(batch["sources"]):
            self.add_row(
                source,
                len(batch["sample_ids"][i]),
                int(batch["num_tokens"][i]),
                int(batch["num_loss_tokens"][i]),
                int(batch["image_counts"][i]),
                width,
            )

    def add_table(self, table) -> None:
        """A pyarrow table of training rows (schema.ROW); slots are each row's own length."""
        cols = table.select(["source", "sample_ids", "num_tokens", "num_loss_tokens", "images", "input_ids"])
        for row in zip(
            cols.column("source").to_pylist(),
            pc_list_lengths(cols.column("sample_ids")),
            cols.column("num_tokens").to_pylist(),
            cols.column("num_loss_tokens").to_pylist(),
            pc_list_lengths(cols.column("images")),
            pc_list_lengths(cols.column("input_ids")),
        ):
            self.add_row(*row)

    def merge(self, other: StreamStats) -> StreamStats:
        for source, t in other.by_source.items():
            mine = self.by_source[source]
            for k in t.__dataclass_fields__:
                setattr(mine, k, getattr(mine, k) + getattr(t, k))
        return self

    def token_shares(self) -> dict[str, float]:
        total = sum(t.tokens for t in self.by_source.values())
        return {s: t.tokens / total for s, t in sorted(self.by_source.items())} if total else {}

    def packing_efficiency(self) -> float:
        slots = sum(t.slots for t in self.by_source.values())
        return sum(t.tokens for t in self.by_source.values()) / slots if slots else 0.0

    def to_dict(self) -> dict:
        return {
            "sources": {
                s: vars(t) | {"share": self.token_shares().get(s, 0.0)}
                for s, t in sorted(self.by_source.items())
            },
            "packing_efficiency": self.packing_efficiency(),
            "rows": sum(t.rows for t in self.by_source.values()),
        }
