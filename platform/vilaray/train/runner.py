"""Stage runner: validate a stage before any worker starts, launch its TorchTrainer, chain stage exports."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from vilaray.compose import StagePlan, plan_stage
from vilaray.config import Recipe, RecipeError
from vilaray.model.spec import ModelSpec
from vilaray.registry import Registry
from vilaray.train.faults import FaultPlan
from vilaray.train.loop import train_locally, train_loop_per_worker
from vilaray.train.progress import ProgressTail
from vilaray.train.provenance import provenance
from vilaray.train.spec import TrainConfig
from vilaray.train.stage_job import StageJob


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where a run lives: Ray Train's checkpoints under `storage`, metrics and exports under `run_dir`."""

    run_name: str
    storage: str
    run_dir: Path

    def export_dir(self, stage: str) -> Path:
        return self.run_dir / stage / "export"

    def trainer_name(self, stage: str) -> str:
        return f"{self.run_name}-{stage}"


def run_paths(recipe: Recipe, run_name: str | None, storage: str | None) -> RunPaths:
    name = run_name or recipe.name
    run_dir = Path(recipe.run_root).resolve() / name
    return RunPaths(name, storage or str(run_dir / "ray"), run_dir)


def _absolute(path: str | None) -> str | None:
    """Ray Train workers run in their own directories: relative paths must be fixed on the driver."""
    if path is None or "://" in path:
        return path
    return str(Path(path).resolve())


def absolute_recipe(recipe: Recipe) -> Recipe:
    model = recipe.model.model_copy(
        update={"path": _absolute(recipe.model.path), "tokenizer": _absolute(recipe.model.tokenizer)}
    )
    stages = {
        name: st.model_copy(update={"data": st.data.model_copy(update={"root": _absolute(st.data.root)})})
        for name, st in recipe.stages.items()
    }
    return recipe.model_copy(update={"model": model, "stages": stages})


def stage_model(recipe: Recipe, stage: str, paths: RunPaths, start_from: Path | None = None) -> ModelSpec:
    """Stage 1 starts from the recipe's model (or `start_from`, an export); stage N+1 from stage N's export,
    which must exist."""
    names = list(recipe.stages)
    idx = names.index(stage)
    if idx == 0 and start_from is None:
        spec = recipe.model
        if spec.path is not None and not (Path(spec.path) / "config.json").is_file():
            raise RecipeError(
                f"model.path {spec.path!r} has no config.json (build it with jobs/make_world.py?)"
            )
        return spec
    prev = Path(start_from).resolve() if start_from is not None else paths.export_dir(names[idx - 1])
    if not (prev / "config.json").is_file():
        origin, hint = (
            ("the export it was given", "no config.json there")
            if start_from is not None
            else (f"stage {names[idx - 1]!r}'s export", "run that stage first")
        )
        raise RecipeError(f"stage {stage!r} starts from {origin}, which does not exist at {prev}; {hint}")
    return ModelSpec(path=str(prev), attn_implementation=recipe.model.attn_implementation)


@dataclass(frozen=True)
class Launched:
    """What a launcher hands back: the last metrics reported and the latest checkpoint, if any."""

    metrics: dict
    checkpoint: Any  # a ray.train.Checkpoint (Ray Train) or a local checkpoint directory


@dataclass(frozen=True)
class StageResult:
    """A finished (or `stop_at_step`-paused) stage: its export (None until the last step), last metrics and
    checkpoint, for the next stage, a Tune trial or a report."""

    stage: str
    export: Path | None
    metrics: dict
    checkpoint: Any
    stage_dir: Path


def run_stage(
    recipe: Recipe,
    stage: str,
    paths: RunPaths,
    record_sample_ids: bool = False,
    faults: FaultPlan | None = None,
    launcher: str = "ray_train",
    callbacks: Sequence = (),
    start_from: Path | None = None,
) -> StageResult:
    """Validate, prepare (deterministic mode) and train one stage with `launcher`: `ray_train` (a
    TorchTrainer over the recipe's workers, with `callbacks` added to its RunConfig) or `local` (one rank in
    this process, deterministic data). `start_from` replaces the export (or model) the stage starts from."""
    from vilaray.data.quarantine import QuarantineActor

    if stage not in recipe.stages:
        raise RecipeError(f"stage {stage!r} not in recipe; stages are {list(recipe.stages)}")
    try:
        launch = LAUNCHERS.get(launcher)
    except KeyError as e:
        raise RecipeError(str(e)) from None
    recipe = absolute_recipe(recipe)
    plan = plan_stage(recipe, stage, stage_model(recipe, stage, paths, start_from))
    cfg = plan.config
    stage_dir = paths.run_dir / stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    ledger = None  # the bad-record ledger of the stream (prepare keeps its own)
    if cfg.train.data_mode == "deterministic":
        # Training reads the prepared shards; no streaming mixture is built.
        datasets, shards = {}, _prepared_shards(plan, stage_dir)
    else:
        ledger = QuarantineActor.remote(str(stage_dir), cfg.data.quarantine_samples)
        # Capped at what the stage can train on: every rank's share of Ray Train's equal split still holds
        # all its steps, and the sources stop tokenizing once nothing more can reach a rank.
        datasets, shards = {"train": plan.data.mixture(ledger, rows_needed(cfg.train)).dataset}, None
    job = StageJob(
        stage=stage,
        stage_config=cfg.model_dump(mode="json", exclude_unset=True),
        model_spec=plan.model.model_dump(mode="json", exclude_unset=True),
        run_dir=str(paths.run_dir),
        export_dir=str(paths.export_dir(stage)),
        pad_id=plan.data.spec.pack.pad_id,
        image_size=plan.data.spec.geometry.image_size,
        prepared_shards=shards,
        trainer_dir=str(Path(paths.storage) / paths.trainer_name(stage)),
        record_sample_ids=record_sample_ids,
        faults=dataclasses.asdict(faults or FaultPlan()),
    )
    prov = provenance(
        recipe.model_dump(mode="json"),
        stage,
        {"data": cfg.data.seed, "train": cfg.train.seed},
        plan.data.files(),
    )
    (stage_dir / "provenance.json").write_text(json.dumps(prov, indent=2))
    loop_config = {
        "job": dataclasses.asdict(job),
        "validation": _validation_rows(plan, stage_dir),
        "evaluation": _eval_bundle(plan, stage_dir),
    }
    with ProgressTail(stage_dir, stage, cfg.train.max_steps, cfg.train.log_every):
        launched = launch(loop_config, cfg.train, paths, stage, datasets, list(callbacks))
    if ledger is not None:
        ray.get(ledger.write_summary.remote())
    export = paths.export_dir(stage)
    return StageResult(
        stage,
        export if (export / "config.json").is_file() else None,
        launched.metrics,
        launched.checkpoint,
        stage_dir,
    )


def _launch_ray_train(
    loop_config: dict, t: TrainConfig, paths: RunPaths, stage: str, datasets: dict, callbacks: list
) -> Launched:
    """A TorchTrainer over `t.num_workers` workers; the held-out rows and benchmark prompts go into the
    object store once, for every rank to read."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    shared = {k: ray.put(v) if v is not None else None for k, v in loop_config.items() if k != "job"}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": loop_config["job"], **shared},
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}
        ),
        datasets=datasets,
        run_config=RunConfig(
            storage_path=paths.storage,
            name=paths.trainer_name(stage),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            callbacks=callbacks,
        ),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo", timeout_s=t.collective_timeout_s),
    )
    result = trainer.fit()
    return Launched(dict(result.metrics or {}), result.checkpoint)


def _launch_local(
    loop_config: dict, t: TrainConfig, paths: RunPaths, stage: str, datasets: dict, callbacks: list
) -> Launched:
    """One rank in this process, checkpoints under `<storage>/<run>-<stage>-local`."""
    if datasets:
        raise RecipeError("the local launcher reads prepared rows: set train.data_mode=deterministic")
    if callbacks:
        raise RecipeError("Ray Train callbacks need the ray_train launcher")
    ctx = train_locally(loop_config, Path(paths.storage) / f"{paths.trainer_name(stage)}-local")
    checkpoints = ctx.checkpoints()
    return Launched(ctx.reports[-1] if ctx.reports else {}, checkpoints[-1] if checkpoints else None)


LAUNCHERS = Registry("launcher", {"ray_train": _launch_ray_train, "local": _launch_local})


def rows_needed(train: TrainConfig) -> int:
    """Rows a deterministic stage can consume: every step's micro-batches on every rank, plus one
    replacement micro-batch per rank for each non-finite skip the policy allows."""
    per_micro = train.micro_batch_size * train.num_workers
    skips = train.max_nonfinite_skips if train.on_nonfinite == "skip" else 0
    return per_micro * (train.max_steps * train.grad_accum + skips)


def _prepared_shards(plan: StagePlan, stage_dir: Path) -> list[str]:
    """The stage's prepared shards, materialised up to the rows it can consume. Preparation keeps order,
    so a longer run (a resume with more steps) re-prepares the same rows followed by the next ones."""
    from vilaray.data.prepare import prepare

    prepared = stage_dir / "prepared"
    need = rows_needed(plan.config.train)
    stats = prepared / "stats.json"
    if stats.is_file():
        meta = json.loads(stats.read_text())
        cap, have = meta.get("max_rows"), meta.get("stream", {}).get("rows", 0)
        # Complete: the whole mixture, enough rows, or a mixture that ran dry before the cap. Shards copied
        # in by hand (no stream recorded) are taken as they are.
        complete = cap is None or "stream" not in meta or have >= need or have < cap
    if not stats.is_file() or not complete:
        prepare(plan.data, stage_dir, max_rows=need, about={"recipe": plan.recipe.name, "stage": plan.stage})
    return [str(p) for p in sorted(prepared.glob("shard-*.parquet"))]


def _validation_rows(plan: StagePlan, stage_dir: Path):
    """The stage's held-out rows (a table), or None."""
    from vilaray.train.validation import build_validation_rows

    cfg = plan.config
    if not cfg.validation.every:
        return None
    table, found = build_validation_rows(plan.data, cfg.validation.rows_per_source)
    (stage_dir / "validation.json").write_text(json.dumps(found, indent=2))
    if table.num_rows == 0:
        raise RecipeError(
            f"validation.every is set but no source has held-out samples at data.holdout={cfg.data.holdout}"
        )
    empty = sorted(name for name, f in found.items() if not f["rows"])
    if empty:
        print(
            f"[{stage_dir.name}] validation: no held-out rows for {empty} at data.holdout={cfg.data.holdout}",
            flush=True,
        )
    return table


def _eval_bundle(plan: StagePlan, stage_dir: Path):
    """The stage's in-training benchmark prompts, encoded once; or None."""
    from vilaray.train.evaluation import build_eval_bundle

    cfg = plan.config
    if not cfg.evaluation.every:
        return None
    bundle = build_eval_bundle(plan.data.spec, cfg.evaluation)
    summary = {
        "tasks": [t.task.name for t in bundle.tasks],
        "shots": bundle.shots,
        "prompts": len(bundle.prompts),
        "not_encodable": bundle.skipped,
    }
    (stage_dir / "evaluation.json").write_text(json.dumps(summary, indent=2))
    return bundle


def run_stages(recipe: Recipe, stages: list[str], paths: RunPaths, **kw) -> dict[str, StageResult]:
    return {stage: run_stage(recipe, stage, paths, **kw) for stage in stages}
