"""`jobs/tune.py`: run, resume or inspect a sweep; fit the mixture regression and run its proposals."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from vilaray.config import RecipeError, apply_overrides, load_recipe

INTERRUPTED = 130  # a shell's exit status after Ctrl-C


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--recipe", required=True)
    p.add_argument(
        "--space", default=None, help="search space YAML (jobs/recipes/tune/); not for --status/--fit"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--start-from", default=None, help="the export trials start from (replaces the space's)")
    p.add_argument("--name", default=None, help="sweep name under run_root (default: the space file's name)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted sweep of the same name")
    p.add_argument("--status", metavar="NAME", default=None, help="print a sweep's results so far and stop")
    p.add_argument("--fit", metavar="NAME", default=None, help="fit the mixture regression on a sweep")
    p.add_argument("--propose", type=int, default=0, metavar="K", help="run the K best predicted mixtures")
    p.add_argument("--keep-exports", action="store_true", help="keep every finished trial's export")
    p.add_argument(
        "--drill-sigkill",
        dest="drills",
        action="append",
        default=[],
        metavar="TRIAL:STEP",
        help="reliability drill: trial number TRIAL (0-based, in creation order) loses its last train "
        "worker (SIGKILL) before STEP of its first stage, once; Ray Train resumes it from its checkpoint",
    )
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=float, default=None, help="logical CPUs of a local Ray")
    return p


def main(description: str, argv=None) -> int:
    args = parser(description).parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        raw = apply_overrides(yaml.safe_load(Path(args.recipe).read_text()) or {}, args.overrides)
        run_root = Path(recipe.run_root).resolve()
        if args.status:
            return status(run_root / args.status)
        if args.fit:
            return fit_and_propose(run_root / args.fit, args)
        if not args.space:
            raise RecipeError("--space is required to run a sweep")
        from vilaray.tune.space import load_space

        space = load_space(args.space, recipe, raw, start_from=args.start_from)
        drills = parse_drills(args.drills)
    except (RecipeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    name = args.name or Path(args.space).stem
    return run(name, run_root / name, recipe, raw, space, args, drills)


def parse_drills(values: list[str]) -> dict[int, int]:
    """`TRIAL:STEP` pairs -> {trial number: step}; a malformed one is refused before any trial runs."""
    drills = {}
    for value in values:
        trial, _, step = value.partition(":")
        if not (trial.isdigit() and step.isdigit() and int(step) >= 1):
            raise RecipeError(f"--drill-sigkill {value!r}: expected TRIAL:STEP, e.g. 3:6")
        drills[int(trial)] = int(step)
    return drills


def status(root: Path) -> int:
    table = root / "results.md"
    if not table.is_file():
        print(f"error: no results at {root} yet", file=sys.stderr)
        return 2
    print(table.read_text().rstrip())
    return 0


def _start(root: Path, args):
    from vilaray.console import point_to_logs_on_failure
    from vilaray.runtime import init_job

    # The dashboard is part of a sweep: trials, their Train runs and actors, resource use.
    logs = init_job(root, args.address, num_cpus=args.num_cpus, include_dashboard=True)
    print(f"[tune] Ray's own logs: {logs}", flush=True)
    return point_to_logs_on_failure(root)


def run(name: str, root: Path, recipe, raw, space, args, drills: dict[int, int]) -> int:
    from vilaray.tune.sweep import concurrency, finish, load_rows, tuner
    from vilaray.tune.trial import Sweep

    root.mkdir(parents=True, exist_ok=True)
    (root / "space.yaml").write_text(yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False))
    (root / "recipe.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sweep = Sweep(name, root, raw, recipe, space, os.getcwd(), drills)
    with _start(root, args):
        from ray.util import placement_group_table

        before = set(placement_group_table())
        t, progress = tuner(
            sweep, space.param_space(recipe), space.tune_samples(), "sweep", resume=args.resume
        )
        print(
            f"[tune {name}] {progress.planned} trials, {concurrency(sweep)} at a time; objective "
            f"{space.objective.name} ({space.objective.mode}); results in {root}; "
            f"tensorboard --logdir {sweep.trials_dir}",
            flush=True,
        )
        t.fit()
        ended = sum(r.ended for r in load_rows(root).values())
        if ended < progress.planned:
            # Ctrl-C: Tune stopped the running trials and saved its state; the results so far are written.
            print(
                f"[tune {name}] interrupted: {ended}/{progress.planned} trials ended; results so far in {root}; "
                f"the same command with --resume runs the rest",
                flush=True,
            )
            return INTERRUPTED
        finish(sweep, args.propose, args.keep_exports, groups_before=before)
    return status(root)


def fit_and_propose(root: Path, args) -> int:
    from vilaray.tune.sweep import finish
    from vilaray.tune.trial import Sweep, load_sweep

    try:
        sweep: Sweep = load_sweep(root)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.propose:
        with _start(root, args):
            finish(sweep, args.propose, args.keep_exports)
    else:
        finish(sweep, 0, keep_exports=True)
    return status(root)
