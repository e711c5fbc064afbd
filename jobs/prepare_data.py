"""Materialise a recipe's data mixture to Parquet shards in a seeded order and print its statistics."""

import argparse
import sys
from pathlib import Path

import _bootstrap  # noqa: F401
from vilaray.compose import recipe_data
from vilaray.config import RecipeError, load_recipe
from vilaray.console import point_to_logs_on_failure
from vilaray.data.prepare import format_report, prepare
from vilaray.data.sample import SourceError
from vilaray.runtime import init_job


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recipe", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--stage",
        default=None,
        help="whose data section to prepare (default: the recipe's `data`, else its first stage's)",
    )
    p.add_argument(
        "--run-name", default=None, help="run directory name under run_root (default: recipe name)"
    )
    p.add_argument("--max-rows", type=int, default=None, help="stop after this many training rows")
    p.add_argument("--rows-per-shard", type=int, default=1024)
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    args = p.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as e:
        print(e, file=sys.stderr)
        return 2
    run_dir = Path(recipe.run_root) / (args.run_name or recipe.name)
    init_job(run_dir, args.address)
    try:
        with point_to_logs_on_failure(run_dir):
            planned = recipe_data(recipe, args.stage)
            about = {"recipe": recipe.name, "stage": args.stage}
            result = prepare(planned, run_dir, args.max_rows, args.rows_per_shard, about=about)
    except (SourceError, RecipeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(result.stats))
    print(f"wrote {len(result.shards)} shards to {result.out_dir} (stats: {result.out_dir / 'stats.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
