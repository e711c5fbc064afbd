"""Timing a stream of training rows: end to end and in steady state, as rates per second of wall time."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from vilaray.data.stats import StreamStats

RATES = ("samples", "tokens", "images")


@dataclass(frozen=True)
class Throughput:
    """Counts delivered in an interval; rates are per second of wall time."""

    seconds: float
    rows: int
    samples: int
    tokens: int
    images: int

    @classmethod
    def of(cls, stats: StreamStats, seconds: float) -> Throughput:
        t = stats.by_source.values()
        return cls(
            seconds,
            sum(s.rows for s in t),
            sum(s.samples for s in t),
            sum(s.tokens for s in t),
            sum(s.images for s in t),
        )

    @classmethod
    def pooled(cls, parts: list[Throughput]) -> Throughput:
        """Several timed runs as one: total counts over total time."""
        return cls(*(sum(getattr(p, f) for p in parts) for f in cls.__dataclass_fields__))

    def rate(self, what: str) -> float:
        return getattr(self, what) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {f"{what}_per_s": self.rate(what) for what in RATES}


@dataclass
class StreamClock:
    """Times a stream of training rows: end to end from `start`, steady state from the first arrival on.

    Steady state counts only what arrives after the first batch, over the time since it arrived, so
    start-up (planning, actor construction, the first window) is out of it on both sides.
    """

    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None
    total: StreamStats = field(default_factory=StreamStats)
    after_first: StreamStats = field(default_factory=StreamStats)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, samples so far)

    def add(self, batch: StreamStats) -> None:
        now = time.perf_counter()
        self.total.merge(batch)
        if self.first is None:
            self.first = now
        else:
            self.after_first.merge(batch)
        self.last = now
        self.arrivals.append((now - self.start, sum(t.samples for t in self.total.by_source.values())))

    def add_table(self, table) -> None:
        batch = StreamStats()
        batch.add_table(table)
        self.add(batch)

    def add_row(self, row: dict) -> None:
        batch = StreamStats()
        batch.add_row(
            row["source"],
            len(row["sample_ids"]),
            int(row["num_tokens"]),
            int(row["num_loss_tokens"]),
            len(row["images"]),
            len(row["input_ids"]),
        )
        self.add(batch)

    def end_to_end(self) -> Throughput:
        return Throughput.of(self.total, (self.last or self.start) - self.start)

    def steady(self) -> Throughput:
        return Throughput.of(self.after_first, (self.last or 0.0) - (self.first or 0.0))

    def first_output_s(self) -> float:
        return (self.first or self.start) - self.start

    def time_to_share(self, share: float) -> float:
        """Seconds from start until `share` of the samples had arrived (shows bursts vs a steady stream)."""
        total = self.arrivals[-1][1] if self.arrivals else 0
        return next((t for t, n in self.arrivals if n >= share * total), 0.0)

    def middle_rate(self, lo: float = 0.1, hi: float = 0.9) -> float:
        """Samples/s between the `lo` and `hi` arrival shares: steady state without a start-up backlog."""
        total = self.arrivals[-1][1] if self.arrivals else 0
        seconds = self.time_to_share(hi) - self.time_to_share(lo)
        return (hi - lo) * total / seconds if seconds > 0 else 0.0
