"""Evaluate exports on a task suite at 0/k shots: `python jobs/evaluate.py --model DIR [--model DIR2] --shots 0,4`."""

import argparse
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401
from vilaray.console import quiet_console
from vilaray.evals.harness import (
    baseline_result,
    evaluate_model,
    evaluate_with_control,
    load_tasks,
    prompts_used,
)
from vilaray.evals.report import write_report
from vilaray.evals.tasks import TaskFileError, load_suite
from vilaray.runtime import init_job

SUITE = Path(__file__).resolve().parents[1] / "evals" / "shapes.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", action="append", required=True, help="export directory (repeatable)")
    p.add_argument("--name", action="append", default=[], help="row label per --model (default: the path)")
    p.add_argument("--suite", default=str(SUITE), help="task suite YAML (default: %(default)s)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all in the suite)")
    p.add_argument("--shots", default=None, help="comma-separated shot counts (default: the suite's)")
    p.add_argument("--data-root", default=None, help="folder the suite's paths are relative to")
    p.add_argument("--limit", type=int, default=None, help="at most this many samples per task")
    p.add_argument("--out", default="runs/eval", help="run directory for the table, chart, predictions")
    p.add_argument(
        "--backend", choices=["ray", "local"], default="ray", help="Ray Data actors or one process"
    )
    p.add_argument("--actors", type=int, default=1, help="model actors (one GPU each when present)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--control",
        action="store_true",
        help="also score each model with every query's image swapped for another's (grounding control)",
    )
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    suite, base = load_suite(args.suite, args.data_root)
    if args.tasks:
        wanted = args.tasks.split(",")
        unknown = sorted(set(wanted) - {t.name for t in suite.tasks})
        if unknown:
            raise TaskFileError(
                f"{args.suite}: no task named {unknown}; tasks are {[t.name for t in suite.tasks]}"
            )
        suite = suite.model_copy(update={"tasks": [t for t in suite.tasks if t.name in wanted]})
    shots = [int(k) for k in args.shots.split(",")] if args.shots else suite.shots
    tasks = load_tasks(suite, base, args.limit)
    if args.backend == "ray":
        init_job(Path(args.out), args.address)
    else:
        quiet_console(Path(args.out))
    names = args.name + [str(m) for m in args.model[len(args.name) :]]
    results = [baseline_result(tasks, shots, suite.seed)]
    for model, name in zip(args.model, names):
        t0 = time.time()
        run_kw = {"backend": args.backend, "batch_size": args.batch_size, "actors": args.actors}
        if args.control:
            shuffled = f"{name} (shuffled images)"
            results += evaluate_with_control(model, tasks, shots, suite.seed, name, shuffled, **run_kw)
        else:
            results.append(evaluate_model(model, tasks, shots, suite.seed, name, **run_kw))
        print(f"[eval] {name}: {time.time() - t0:.1f}s", flush=True)
    metrics = {t.task.name: t.task.metric for t in tasks}
    skipped = {t.task.name: t.skipped for t in tasks if t.skipped}
    meta = {
        "suite": str(args.suite),
        "shots": shots,
        "seed": suite.seed,
        "skipped": skipped,
        "models": args.model,
    }
    return write_report(Path(args.out), results, metrics, prompts_used(tasks), meta)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        table = run(args)
    except TaskFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"[eval] table, chart, predictions and prompts in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
