"""Materialise a recipe's mixture to Parquet shards in a seeded order, with the statistics of what was written."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import ray

from vilaray.data import schema
from vilaray.data.pipeline import Mixture, PlannedData
from vilaray.data.quarantine import QuarantineActor
from vilaray.data.stats import StreamStats


@contextlib.contextmanager
def preserved_order() -> Iterator[None]:
    """Ray Data preserves order inside the `with` block: rows come out in the mixture's deterministic order."""
    ctx = ray.data.DataContext.get_current()
    prev, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
    try:
        yield
    finally:
        ctx.execution_options.preserve_order = prev


@dataclass
class PrepareResult:
    out_dir: Path
    shards: list[Path]
    stats: dict


def prepare(
    planned: PlannedData,
    run_dir: Path,
    max_rows: int | None = None,
    rows_per_shard: int = 1024,
    verbose: bool = False,
    about: dict | None = None,
) -> PrepareResult:
    """Stream the mixture once and write it as `shard-00000.parquet`... under `<run_dir>/prepared`; `about`
    (recipe name, stage) heads the statistics.

    Execution preserves order, so for the same recipe and seed the shards hold the same rows in the same
    order: the deterministic input that exact resumption in training builds on.
    """
    with preserved_order():
        data = planned.config
        ledger = QuarantineActor.remote(str(run_dir), data.quarantine_samples)
        mixture = planned.mixture(ledger, max_rows)
        out_dir = run_dir / "prepared"
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob("shard-*.parquet"):
            stale.unlink()
        shards, stats = write_shards(mixture, out_dir, max_rows, rows_per_shard)
        skipped = ray.get(ledger.write_summary.remote())
        if verbose:
            print(mixture.dataset.stats())
    report = {
        **(about or {}),
        "seed": data.seed,
        "max_rows": max_rows,
        "seq_len": data.seq_len,
        "packing": data.packing,
        "mixture": mixture.describe(),
        "stream": stats.to_dict(),
        **skipped,
        "shards": [p.name for p in shards],
    }
    (out_dir / "stats.json").write_text(json.dumps(report, indent=2))
    return PrepareResult(out_dir, shards, report)


def write_shards(mixture: Mixture, out_dir: Path, max_rows: int | None, rows_per_shard: int):
    """The mixture's rows (the first `max_rows`, or all) as Parquet shards of `rows_per_shard` rows, in order."""
    stats = StreamStats()
    shards: list[Path] = []
    writer, in_shard, total = None, 0, 0
    for batch in mixture.dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        if max_rows is not None:
            batch = batch.slice(0, max_rows - total)
        start = 0
        while start < batch.num_rows:
            if writer is None:
                shards.append(out_dir / f"shard-{len(shards):05d}.parquet")
                writer = pq.ParquetWriter(shards[-1], schema.ROW)
            piece = batch.slice(start, rows_per_shard - in_shard).cast(schema.ROW)
            writer.write_table(piece)
            stats.add_table(piece)
            start += piece.num_rows
            in_shard += piece.num_rows
            if in_shard >= rows_per_shard:
                writer.close()
                writer, in_shard = None, 0
        total += batch.num_rows
        if max_rows is not None and total >= max_rows:
            break
    if writer is not None:
        writer.close()
    return shards, stats


def format_report(report: dict) -> str:
    """The statistics a user reads after `prepare_data`: per source counts and shares, efficiency, skips."""
    stream = report["stream"]
    mixture = report["mixture"]
    weights, row_weights = mixture["token_weights"], mixture["row_weights"]
    pilot = mixture["pilot_packing_efficiency"]
    lines = [
        f"{'source':<16}{'rows':>8}{'samples':>9}{'tokens':>11}{'images':>8}{'share':>8}{'target':>8}"
        f"{'row w':>8}{'pilot eff':>10}",
    ]
    for name, t in stream["sources"].items():
        lines.append(
            f"{name:<16}{t['rows']:>8}{t['samples']:>9}{t['tokens']:>11}{t['images']:>8}"
            f"{t['share']:>8.3f}{weights.get(name, 0.0):>8.3f}{row_weights.get(name, 0.0):>8.3f}"
            f"{pilot.get(name, 1.0):>10.3f}"
        )
    lines.append(f"packing efficiency (non-pad / all tokens): {stream['packing_efficiency']:.4f}")
    skipped = report.get("skipped", {})
    if skipped:
        lines.append("skipped records:")
        for source, reasons in skipped.items():
            lines.append(f"  {source}: " + ", ".join(f"{r}={n}" for r, n in reasons.items()))
    else:
        lines.append("skipped records: none")
    for source, events in report.get("events", {}).items():
        lines.append(f"  {source} (kept, trimmed): " + ", ".join(f"{k}={n}" for k, n in events.items()))
    return "\n".join(lines)
