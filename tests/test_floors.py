"""The shapes world's acceptance floors after the demo recipe's three stages: the run `make demo` makes, on
the demo-sized world, scored by the eval harness on held-out VQA, captions and text-only questions."""

from __future__ import annotations

from pathlib import Path

import pytest
from vilaray.config import load_recipe
from vilaray.evals.floors import shapes_floors
from vilaray.evals.harness import baseline_result, evaluate_model, load_tasks
from vilaray.evals.tasks import load_suite
from vilaray.train.runner import run_paths, run_stages

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "jobs" / "recipes" / "tiny.yaml"
SUITE = ROOT / "evals" / "shapes.yaml"
EVAL_LIMIT = 100  # samples per task, as the demo's table


@pytest.mark.slow
def test_demo_recipe_meets_the_shapes_floors(ray_session, small_world_dir, small_assets_dir, tmp_path):
    # The shipped recipe unchanged but for where its world, model and runs live.
    overrides = [
        f"model.path={small_assets_dir}",
        f"defaults.data.root={small_world_dir}",
        f"stages.sft.evaluation.data_root={small_world_dir}",
        f"run_root={tmp_path}",
    ]
    recipe = load_recipe(TINY, overrides)
    paths = run_paths(recipe, "floors", None)
    exports = run_stages(recipe, ["align", "pretrain", "sft"], paths)

    suite, base = load_suite(SUITE, small_world_dir)
    tasks = load_tasks(suite, base, EVAL_LIMIT)
    baseline = baseline_result(tasks, [0], suite.seed)
    pretrain, sft = (
        evaluate_model(exports[s], tasks, [0], suite.seed, s, backend="local") for s in ("pretrain", "sft")
    )
    floors = shapes_floors(baseline, pretrain, sft)
    assert all(f.ok for f in floors), "\n".join(f.line() for f in floors)
