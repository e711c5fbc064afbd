"""A stage as its workers receive it (plain JSON-able fields), the model it builds, and its export."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vilaray.config import StageConfig
from vilaray.model.spec import ModelSpec
from vilaray.train.batches import to_device


@dataclass
class StageJob:
    """Everything a worker needs for one stage, in plain JSON-able fields (shipped to every rank)."""

    stage: str
    stage_config: dict
    model_spec: dict
    run_dir: str
    export_dir: str
    pad_id: int
    image_size: int
    # Ray Train's folder for this stage (checkpoints, the controller's checkpoint snapshot).
    trainer_dir: str = ""
    prepared_shards: list[str] | None = None
    record_sample_ids: bool = False
    faults: dict = field(default_factory=dict)  # a FaultPlan (tests, drills)

    @property
    def config(self) -> StageConfig:
        return StageConfig.model_validate(self.stage_config)


def build_for_stage(job: StageJob):
    """The model with this stage's freezing applied, its tokenizer and the freezing report."""
    from vilaray.model.build import build_model
    from vilaray.model.freeze import apply_schedule

    built = build_model(ModelSpec.model_validate(job.model_spec), torch.float32)
    report = apply_schedule(built.model, job.config.freeze)
    return built, report


def export_stage(strategy, job: StageJob, rank: int) -> None:
    """Consolidate the weights (a collective under ZeRO-3) and write the transformers-format export."""
    from vilaray.model.export import export

    state = strategy.full_state_dict()
    if rank == 0:
        fresh, _ = build_for_stage(job)
        fresh.model.load_state_dict(state)
        export(fresh.model, fresh.tokenizer, job.export_dir)
        prov = Path(job.run_dir) / job.stage / "provenance.json"
        if prov.is_file():
            (Path(job.export_dir) / "provenance.json").write_text(prov.read_text())
    strategy.barrier()


def verify_export(strategy, job: StageJob, batch: dict, device: torch.device, rank: int) -> None:
    """The export, reloaded by transformers, must give the engine's logits on a training batch."""
    from transformers import AutoModelForImageTextToText

    import vilaray.model.hf  # noqa: F401  (a vilaray_vlm export loads through the Auto class)

    module = strategy.module
    module.eval()
    with torch.no_grad():
        engine_logits = strategy.forward(**to_device(batch, device)).logits.float().cpu()
    if rank == 0:
        exported = AutoModelForImageTextToText.from_pretrained(job.export_dir).eval()
        pixels = batch["pixel_values"]
        pixels = module.to_model_pixels(pixels).to(exported.dtype).cpu() if pixels.shape[0] else None
        with torch.no_grad():
            ref = exported(
                input_ids=batch["input_ids"],
                pixel_values=pixels,
                position_ids=batch["position_ids"],
                use_cache=False,
            ).logits.float()
        diff = float((ref - engine_logits).abs().max())
        tol = job.config.train.export_tolerance
        report = {"max_abs_logit_diff": diff, "tolerance": tol, "ok": diff <= tol}
        (Path(job.run_dir) / job.stage / "export_check.json").write_text(json.dumps(report, indent=2))
        if diff > tol:
            raise RuntimeError(
                f"export {job.export_dir} disagrees with training: max |logit diff| {diff} > {tol}"
            )
    strategy.barrier()
