"""The data benchmark's results (naive loop, pipeline, packing), their ratios and the table people read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from vilaray.bench.stream_clock import RATES, StreamClock, Throughput


@dataclass
class NaiveRun:
    clocks: list[StreamClock]  # one per timed pass (before and after the pipeline when bracketing)
    lengths: dict[str, list[int]]  # tokenized sample lengths per source, in stream order
    cpu_share: list[float]  # CPU time / wall time of each pass: below ~0.95 something else took the core

    def steady(self) -> Throughput:
        return Throughput.pooled([c.steady() for c in self.clocks])

    def end_to_end(self) -> Throughput:
        return Throughput.pooled([c.end_to_end() for c in self.clocks])

    def token_counts(self) -> dict[str, int]:
        return {name: t.tokens for name, t in self.clocks[0].total.by_source.items()}


@dataclass
class PipelineRun:
    clock: StreamClock
    build_s: float  # build_mixture: planning + pilot packing on the driver
    mixture: dict
    skipped: dict
    ray_stats: str

    def steady(self) -> Throughput:
        return self.clock.steady()

    def end_to_end(self) -> Throughput:
        return self.clock.end_to_end()

    def streaming_share(self) -> float:
        """Share of the run after build_mixture during which rows kept arriving (1.0 = from the start)."""
        executing = self.clock.end_to_end().seconds - self.build_s
        return self.clock.steady().seconds / executing if executing > 0 else 0.0


@dataclass(frozen=True)
class PackingResult:
    """Non-pad share of token slots: FFD packing vs pad-to-longest batches, over the same tokenized samples."""

    seq_len: int
    pad_batch: int
    packed: float  # FFD windows of the naive loop (pack_samples)
    padded: float  # consecutive `pad_batch` samples, each batch padded to its longest
    pipeline: float  # what the pipeline's consumer actually received
    by_source: dict[str, dict[str, float]]

    @property
    def gain(self) -> float:
        return self.packed / self.padded if self.padded else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"gain": self.gain}


@dataclass
class DataBenchReport:
    machine: dict
    config: dict
    corpus: dict
    naive: NaiveRun
    pipeline: PipelineRun
    packing: PackingResult
    failures: list[str] = field(default_factory=list)

    def ratios(self, which: str) -> dict[str, float]:
        """Pipeline rate / naive rate, both measured in this run (`which`: "steady" or "end_to_end")."""
        pipe, naive = getattr(self.pipeline, which)(), getattr(self.naive, which)()
        return {f"{w}_per_s": _ratio(pipe.rate(w), naive.rate(w)) for w in RATES}

    def to_dict(self) -> dict:
        return {
            "benchmark": "data",
            "passed": not self.failures,
            "failures": self.failures,
            "machine": self.machine,
            "config": self.config,
            "corpus": self.corpus,
            "naive": {
                "end_to_end": self.naive.end_to_end().to_dict(),
                "steady": self.naive.steady().to_dict(),
                "passes": [_clock_dict(c) for c in self.naive.clocks],
                "cpu_share": self.naive.cpu_share,
            },
            "pipeline": {
                "end_to_end": self.pipeline.end_to_end().to_dict(),
                "steady": self.pipeline.steady().to_dict(),
                "build_mixture_s": self.pipeline.build_s,
                "streaming_share": self.pipeline.streaming_share(),
                **_clock_dict(self.pipeline.clock),
                "mixture": self.pipeline.mixture,
                **self.pipeline.skipped,
            },
            "ratios": {"steady": self.ratios("steady"), "end_to_end": self.ratios("end_to_end")},
            "packing": self.packing.to_dict(),
            "ray_data_stats": self.pipeline.ray_stats,
        }

    def table(self) -> str:
        return format_table(self)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


def _clock_dict(clock: StreamClock) -> dict:
    return {
        "first_output_s": clock.first_output_s(),
        "arrival_s": {f"{q:.0%}": clock.time_to_share(q) for q in (0.1, 0.5, 0.9, 1.0)},
        "samples_per_s_10_to_90": clock.middle_rate(),
        "by_source": {n: asdict(t) for n, t in sorted(clock.total.by_source.items())},
    }


def _line(label: str, t: Throughput) -> str:
    return (
        f"{label:<42}{t.seconds:>8.1f}{t.samples:>9}{t.tokens:>11}{t.images:>8}"
        f"{t.rate('samples'):>11.0f}{t.rate('tokens'):>11.0f}{t.rate('images'):>10.0f}"
    )


def _ratio_line(label: str, r: dict[str, float]) -> str:
    return f"{label:<62}{r['samples_per_s']:>10.2f}x{r['tokens_per_s']:>10.2f}x{r['images_per_s']:>9.2f}x"


def format_table(report: DataBenchReport) -> str:
    m, cfg, p = report.machine, report.config, report.packing
    naive, pipe = report.naive, report.pipeline
    sources = ", ".join(f"{n} x{s['epochs']}" for n, s in report.corpus["sources"].items())
    passes = "before and after the pipeline, pooled" if len(naive.clocks) > 1 else "before the pipeline"
    rates = ", ".join(f"{c.steady().rate('samples'):.0f}" for c in naive.clocks)
    arrivals = ", ".join(f"{q:.0%} at {pipe.clock.time_to_share(q):.1f}s" for q in (0.1, 0.5, 0.9))
    lines = [
        f"data benchmark: {sources}; seq_len {cfg['seq_len']}, pack window {cfg['pack_window']}",
        f"machine: {m['cpus_usable']} cores ({m['cpu_model']}), Ray {m['ray']} with {m['ray_cpus']:g} logical CPUs, "
        f"torch {m['torch']}; nice {m['nice_driver']} (naive, driver) / {m['nice_ray_workers']} (Ray workers); "
        f"load avg {m['loadavg_before'][0]:.1f} before, {m['loadavg_after'][0]:.1f} after",
        "",
        f"{'':<42}{'seconds':>8}{'samples':>9}{'tokens':>11}{'images':>8}{'samples/s':>11}{'tokens/s':>11}{'images/s':>10}",
        _line("naive loop, end to end", naive.end_to_end()),
        _line("naive loop, steady (1st row on)", naive.steady()),
        _line("Ray Data pipeline, end to end", pipe.end_to_end()),
        _line("Ray Data pipeline, steady (1st batch on)", pipe.steady()),
        f"  naive: {len(naive.clocks)} pass(es) {passes}; steady samples/s per pass {rates}; "
        f"CPU share {', '.join(f'{s:.2f}' for s in naive.cpu_share)}",
        f"  pipeline: build_mixture {pipe.build_s:.1f}s (plan + pilot packing on the driver), first batch at "
        f"{pipe.clock.first_output_s():.1f}s; samples {arrivals}; streaming {pipe.streaming_share():.0%} of its run",
        f"  10%->90% of samples: pipeline {pipe.clock.middle_rate():.0f} samples/s, naive "
        f"{', '.join(f'{c.middle_rate():.0f}' for c in naive.clocks)} samples/s (start-up backlog and tail excluded)",
        "",
        f"{'pipeline / naive, both timed in this run':<62}{'samples/s':>11}{'tokens/s':>11}{'images/s':>10}",
        _ratio_line("  steady state (checked: must be > 1)", report.ratios("steady")),
        _ratio_line("  end to end (start-up included, not checked)", report.ratios("end_to_end")),
        "",
        f"packing at {p.seq_len} tokens, non-pad / all token slots (floor {cfg['min_packing']}):",
        f"  FFD windows (pack_samples) {p.packed:.4f}   pipeline stream {p.pipeline:.4f}   "
        f"pad-to-longest, {p.pad_batch}/batch {p.padded:.4f}   packed / padded {p.gain:.2f}x",
    ]
    for name, s in p.by_source.items():
        lines.append(
            f"    {name:<12} {s['samples']:>7} samples   FFD {s['packed']:.4f}   pad-to-longest {s['padded']:.4f}"
        )
    lines += ["", "PASS" if not report.failures else "FAIL: " + "; ".join(report.failures)]
    return "\n".join(lines)
