"""Bad-record ledger: counts skips per source and reason, keeps a sample of each in the run's quarantine folder."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import ray

from vilaray.data.sample import Reject


class Quarantine:
    """Counts every skipped record and notable event; writes the first `keep` records of each
    (source, reason) to `<run_dir>/quarantine/<source>/<reason>.jsonl` so they can be inspected."""

    def __init__(self, run_dir: str | None, keep: int = 20):
        self.root = Path(run_dir) / "quarantine" if run_dir else None
        self.keep = keep
        self.rejects: Counter[tuple[str, str]] = Counter()
        self.events: Counter[tuple[str, str]] = Counter()

    def add(self, rejects: list[Reject], events: dict[tuple[str, str], int] | None = None) -> None:
        for r in rejects:
            key = (r.source, r.reason)
            self.rejects[key] += 1
            if self.root is not None and self.rejects[key] <= self.keep:
                path = self.root / r.source / f"{r.reason}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as f:
                    f.write(r.to_json() + "\n")
        self.events.update(events or {})

    def summary(self) -> dict:
        def nest(counter: Counter) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for (source, key), n in sorted(counter.items()):
                out.setdefault(source, {})[key] = n
            return out

        return {"skipped": nest(self.rejects), "events": nest(self.events)}

    def write_summary(self) -> dict:
        summary = self.summary()
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


# One ledger per run, shared by every Ray Data worker; zero CPUs so it never competes for a slot.
QuarantineActor = ray.remote(num_cpus=0, max_concurrency=1)(Quarantine)


class LedgerClient:
    """Buffers rejects/events in a worker and forwards them to the ledger (an actor or a local object)."""

    def __init__(self, ledger, flush_every: int = 64):
        self.ledger = ledger
        self.flush_every = flush_every
        self.rejects: list[Reject] = []
        self.events: Counter[tuple[str, str]] = Counter()

    def reject(self, r: Reject) -> None:
        self.rejects.append(r)
        if len(self.rejects) >= self.flush_every:
            self.flush()

    def event(self, source: str, key: str, n: int) -> None:
        self.events[(source, key)] += n

    def flush(self) -> None:
        if not self.rejects and not self.events:
            return
        rejects, events = self.rejects, dict(self.events)
        self.rejects, self.events = [], Counter()
        if isinstance(self.ledger, Quarantine):
            self.ledger.add(rejects, events)
        else:
            # Blocking on purpose: a pooled worker may be torn down right after its last batch, and a
            # fire-and-forget call would then lose the counts.
            ray.get(self.ledger.add.remote(rejects, events))
