"""Shared command line of the training jobs (pretrain.py, sft.py): parse, validate, run the stages."""

from __future__ import annotations

import argparse
import sys

from vilaray.config import RecipeError, load_recipe
from vilaray.data.sample import SourceError


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--recipe", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stage", action="append", default=None, help="run only this stage (repeatable)")
    p.add_argument("--run-name", default=None, help="same name = resume that run (default: recipe name)")
    p.add_argument(
        "--storage", default=None, help="Ray Train storage: a folder or a URI (default: the run dir)"
    )
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--num-cpus",
        type=float,
        default=None,
        help="logical CPUs of a local Ray (default: cores, at least 8)",
    )
    p.add_argument("--dry-run", action="store_true", help="validate recipe and model shapes, then stop")
    return p


def main(description: str, default_stages: list[str] | None, argv=None) -> int:
    args = parser(description).parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        stages = args.stage or [s for s in recipe.stages if default_stages is None or s in default_stages]
        missing = [s for s in stages if s not in recipe.stages]
        if missing or not stages:
            raise RecipeError(f"stages {missing or stages} not in recipe; it has {list(recipe.stages)}")
        if args.dry_run:
            return dry_run(recipe, stages)
        from vilaray.console import point_to_logs_on_failure
        from vilaray.runtime import init_job
        from vilaray.train.runner import run_paths, run_stages

        paths = run_paths(recipe, args.run_name, args.storage)
        init_job(paths.run_dir, args.address, num_cpus=args.num_cpus)
        with point_to_logs_on_failure(paths.run_dir):
            results = run_stages(recipe, stages, paths)
    except (RecipeError, SourceError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for stage, result in results.items():
        if result.export is None:
            print(
                f"[{stage}] stopped at step {result.metrics.get('step')} (train.stop_at_step): no export yet"
            )
        else:
            print(f"[{stage}] export: {result.export}")
    return 0


def dry_run(recipe, stages: list[str]) -> int:
    from vilaray.model.meta import build_on_meta

    _, report = build_on_meta(recipe.model)
    print(report.table())
    for stage in stages:
        t = recipe.stages[stage].train
        print(
            f"[{stage}] zero {t.zero_stage}, {t.num_workers} workers x micro {t.micro_batch_size} x accum {t.grad_accum}"
        )
    return 0
