"""The shapes world's acceptance floors after the shipped recipe's three stages (the session's `tiny_run`,
the run `make demo` makes, on the demo-sized world), scored by the eval harness on held-out VQA, captions
and text-only questions."""

from __future__ import annotations

import pytest
from conftest import SUITE
from vilaray.evals.floors import shapes_floors
from vilaray.evals.harness import baseline_result, evaluate_model, load_tasks
from vilaray.evals.tasks import load_suite

EVAL_LIMIT = 100  # samples per task (the demo asserts the floors on 300; 100 keeps the suite short)


@pytest.mark.slow
def test_demo_recipe_meets_the_shapes_floors(tiny_run, small_world_dir):
    exports = tiny_run.exports
    suite, base = load_suite(SUITE, small_world_dir)
    tasks = load_tasks(suite, base, EVAL_LIMIT)
    baseline = baseline_result(tasks, [0], suite.seed)
    pretrain, sft = (
        evaluate_model(exports[s], tasks, [0], suite.seed, s, backend="local") for s in ("pretrain", "sft")
    )
    floors = shapes_floors(baseline, pretrain, sft)
    assert all(f.ok for f in floors), "\n".join(f.line() for f in floors)
