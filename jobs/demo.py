"""`make demo`: shapes world + tiny assets, the pretrain mixture's statistics, stages 1-3 on local Ray, the eval
table, and one question to the SFT export through Ray Serve."""

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import _bootstrap  # noqa: F401
from vilaray.compose import recipe_data
from vilaray.config import load_recipe
from vilaray.console import point_to_logs_on_failure
from vilaray.data.prepare import format_report, prepare
from vilaray.evals.floors import shapes_floors
from vilaray.evals.harness import (
    baseline_result,
    evaluate_model,
    evaluate_with_control,
    load_tasks,
    prompts_used,
)
from vilaray.evals.report import write_report
from vilaray.evals.tasks import load_suite
from vilaray.runtime import init_job
from vilaray.synth.assets import build_assets
from vilaray.synth.world import build_world
from vilaray.train.runner import run_paths, run_stages

RECIPE = Path(__file__).parent / "recipes" / "tiny.yaml"
SUITE = Path(__file__).resolve().parents[1] / "evals" / "shapes.yaml"
RUN_NAME = "demo"
STAGES = ["align", "pretrain", "sft"]


class Phases:
    """Wall time per phase, printed as each ends and summed at the end."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.t0 = time.time()

    def done(self, name: str) -> None:
        now = time.time()
        self.times[name] = now - self.t0
        self.t0 = now
        print(f"[demo] {name}: {self.times[name]:.1f}s", flush=True)

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in self.times.items())
        return f"[demo] total {sum(self.times.values()):.0f}s ({parts})"


def fresh_run(paths, stages: list[str]) -> None:
    """The same run name resumes from its checkpoints; the demo trains from scratch unless --resume."""
    for d in [paths.run_dir / s for s in stages] + [Path(paths.storage)]:
        if d.exists():
            shutil.rmtree(d)


def loss_curve(stage_dir: Path) -> str:
    """First and last logged loss of a stage, from the rank-0 metrics log."""
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line]
    first, last = rows[0], rows[-1]
    return f"loss {first['loss']:.3f} (step {first['step']}) -> {last['loss']:.3f} (step {last['step']})"


PREPARE_ROWS = 256


def evaluate_stages(recipe, paths, exports: dict, world_root, limit: int):
    """The shapes suite (0 and 4 shots) for the untrained model and each stage's export, one table."""
    suite, base = load_suite(SUITE, world_root)
    tasks = load_tasks(suite, base, limit)
    models = {"untrained": recipe.model.path} | exports
    results = [baseline_result(tasks, suite.shots, suite.seed)]
    scored = [name for name in models if name != "sft"]
    results += [evaluate_model(models[name], tasks, suite.shots, suite.seed, name) for name in scored]
    # The final model, and its grounding control (every query's image swapped for another's) in one pass.
    results += evaluate_with_control(
        exports["sft"], tasks, suite.shots, suite.seed, "sft", "sft, shuffled images"
    )
    metrics = {t.task.name: t.task.metric for t in tasks}
    meta = {"suite": str(SUITE), "shots": suite.shots, "models": {k: str(v) for k, v in models.items()}}
    table = write_report(paths.run_dir / "eval", results, metrics, prompts_used(tasks), meta)
    by_name = {r.model: r for r in results}
    return table, shapes_floors(results[0], by_name["pretrain"], by_name["sft"])


def ask_served(export: Path, world_root: Path) -> str:
    """One held-out VQA question about its image, asked of the SFT export through Ray Serve on this Ray and
    the `openai` client, as a user of `jobs/serve.py` would; Serve is shut down after."""
    import openai
    from ray import serve
    from vilaray.serve.app import build_app
    from vilaray.serve.local import free_port
    from vilaray.serve.shapes import shapes_questions

    port = free_port()
    # Serve re-creates its driver logger's handlers when it starts (console included): a filter on the logger
    # itself survives that and keeps its INFO lines (started, app ready) off the demo's console.
    serve_logger, quiet = logging.getLogger("ray.serve"), logging.Filter()
    quiet.filter = lambda record: record.levelno >= logging.WARNING
    serve_logger.addFilter(quiet)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"model": str(export), "num_cpus": 0.5}), name="demo", route_prefix="/")
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120
        )
        (q,) = shapes_questions(world_root, 1, short_answer=True)
        reply = client.chat.completions.create(model="sft", messages=q.messages, max_tokens=16, temperature=0)
    finally:
        serve.shutdown()
        serve_logger.removeFilter(quiet)
    return f"[demo] asked through Ray Serve + openai about {q.image.name}: {q.question!r} -> {reply.choices[0].message.content!r}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--recipe", default=str(RECIPE))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue runs/demo instead of starting over")
    p.add_argument("--eval-limit", type=int, default=300, help="samples per eval task")
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    phases = Phases()
    paths = run_paths(recipe, RUN_NAME, None)
    logs = init_job(paths.run_dir)  # logical CPUs above a laptop's cores: vilaray.runtime.LOCAL_LOGICAL_CPUS
    print(f"[demo] Ray's own logs: {logs}", flush=True)
    data = recipe.data_for("pretrain")
    build_world(data.root, seed=recipe.seed, scale="small")
    build_assets(data.root, recipe.model.path)
    phases.done("world + tiny assets")
    with point_to_logs_on_failure(paths.run_dir):
        # A look at the pretrain mixture: its first rows through the same pipeline the stage streams from.
        about = {"recipe": recipe.name, "stage": "pretrain"}
        result = prepare(recipe_data(recipe, "pretrain"), paths.run_dir, max_rows=PREPARE_ROWS, about=about)
        print(format_report(result.stats))
        phases.done(f"first {PREPARE_ROWS} pretrain rows through Ray Data ({result.out_dir})")

        if not args.resume:
            fresh_run(paths, STAGES)
        exports = {}
        for stage in STAGES:
            exports[stage] = run_stages(recipe, [stage], paths)[stage].export
            phases.done(f"stage {stage}")
        for stage in STAGES:
            print(f"[demo] {stage:<8} {loss_curve(paths.run_dir / stage)}")

        table, floors = evaluate_stages(recipe, paths, exports, data.root, args.eval_limit)
        phases.done("evaluation (untrained + after each stage)")
        print(table)
        for f in floors:
            print(f"[demo] {f.line()}")
        print(ask_served(exports["sft"], Path(data.root)))
        phases.done("one question through Ray Serve")
        print(phases.summary())
    if missed := [f.name for f in floors if not f.ok]:
        print(f"[demo] FAILED: floors not met: {'; '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
