"""`make demo`: generate the shapes world, build the tiny assets, stream the tiny recipe's mixture on local Ray."""

import argparse
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401
from vilaray.config import load_recipe
from vilaray.data.prepare import format_report, prepare
from vilaray.runtime import init_ray
from vilaray.synth.assets import build_assets
from vilaray.synth.world import build_world

RECIPE = Path(__file__).parent / "recipes" / "tiny.yaml"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recipe", default=str(RECIPE))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    t0 = time.time()
    data = recipe.data_for("pretrain")
    build_world(data.root, seed=recipe.seed, scale="small")
    build_assets(data.root, recipe.model.path)
    print(f"[demo] world + tiny assets ready in {time.time() - t0:.1f}s")

    # Logical CPUs above the physical ones: the demo runs 4 tokenizer actors plus read tasks on a laptop.
    init_ray(num_cpus=8)
    t0 = time.time()
    result = prepare(recipe, Path(recipe.run_root) / "demo", stage="pretrain")
    print(f"[demo] streamed the {recipe.name!r} mixture through Ray Data in {time.time() - t0:.1f}s")
    print(format_report(result.stats))
    print(f"[demo] shards + stats.json in {result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
