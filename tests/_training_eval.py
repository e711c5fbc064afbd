"""Checks that a run's in-training benchmark scores equal the harness's on the stage's transformers export."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import SUITE


def assert_eval_matches_export(stage_dir: Path, step: int, evaluation: dict, data_root: Path) -> None:
    """The engine's lockstep greedy decoding (and choice log-likelihoods) at `step` gave the same scores as
    transformers' generate on the export written right after it: the train/serve parity of generation."""
    from vilaray.evals.harness import evaluate_model, load_tasks
    from vilaray.evals.tasks import load_suite

    rows = {r["step"]: r for r in map(json.loads, (stage_dir / "metrics.jsonl").open())}
    logged = {k.removeprefix("eval/"): v for k, v in rows[step].items() if k.startswith("eval/")}
    suite, base = load_suite(SUITE, data_root)
    if evaluation.get("tasks"):
        suite = suite.model_copy(update={"tasks": [t for t in suite.tasks if t.name in evaluation["tasks"]]})
    tasks = load_tasks(suite, base, evaluation["limit"])
    ref = evaluate_model(stage_dir / "export", tasks, evaluation["shots"], suite.seed, backend="local")
    expected = {k: s.value for k, s in ref.scores.items()}
    assert logged.keys() == expected.keys(), (logged, expected)
    for k in expected:
        assert abs(logged[k] - expected[k]) < 1e-9, (k, logged[k], expected[k])
