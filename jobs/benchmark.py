"""Benchmarks against a baseline measured in the same run: `python jobs/benchmark.py data [--options]`."""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import _bootstrap  # noqa: F401
from vilaray.bench import BENCHMARKS, Benchmark
from vilaray.console import point_to_logs_on_failure
from vilaray.runtime import init_job

# Two settings of a local Ray, set before it starts (export either variable to override):
# - Ray starts its workers at nice 15 and the driver (so the naive baseline) at 0: on a shared machine the
#   baseline would win every contended time slice. Same priority on both sides.
# - Ray kills a task worker that idles for 1 s while idle workers outnumber the free CPUs, and starts a
#   new process (seconds of CPU on 2 cores) for the next burst of tasks. Keep idle ones instead.
os.environ.setdefault("RAY_worker_niceness", "0")
os.environ.setdefault("RAY_num_workers_soft_limit", "16")


def add_config_flags(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One `--flag` per config field, typed by its default (bools get --flag / --no-flag)."""
    for f in dataclasses.fields(config_type):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if isinstance(f.default, bool):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        else:
            parser.add_argument(
                flag,
                dest=f.name,
                type=type(f.default),
                default=f.default,
                help=f"{help_text} (default: %(default)s)",
            )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="benchmark", required=True)
    for bench in BENCHMARKS.values():
        bp = sub.add_parser(
            bench.name,
            help=bench.summary.splitlines()[0],
            description=bench.summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_config_flags(bp, bench.config)
        bp.add_argument("--out", default=bench.default_out, help="JSON report (default: %(default)s)")
        bp.add_argument(
            "--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)"
        )
        bp.add_argument(
            "--ray-cpus",
            type=float,
            default=bench.ray_cpus,
            help="logical CPUs of a local Ray (default: %(default)s)",
        )
    return p


def config_from_args(bench: Benchmark, args: argparse.Namespace):
    return bench.config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(bench.config)})


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    bench = BENCHMARKS.get(args.benchmark)
    out = Path(args.out)
    # One logical CPU per core unless set: throughput is compared against a single process. Ray's own
    # logs go to files beside the report, not to the console.
    run_dir = out.with_suffix("")
    logs = init_job(
        run_dir, args.address, num_cpus=args.ray_cpus or os.cpu_count(), include_dashboard=bench.dashboard
    )
    print(f"[{bench.name}] Ray's own logs: {logs}", flush=True)
    with point_to_logs_on_failure(run_dir):
        report = bench.run(config_from_args(bench, args))
    print(report.table())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2))
    print(f"report: {out}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
