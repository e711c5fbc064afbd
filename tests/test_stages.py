"""The three VILA stages end to end on the shipped tiny recipe (the session's `tiny_run`), and the checks
that refuse a stage before any worker starts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _training_eval import assert_eval_matches_export
from _wandb_records import history
from conftest import TINY_RUN_EVALUATION
from vilaray.config import RecipeError, load_recipe
from vilaray.train.runner import run_paths, run_stage

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "jobs" / "recipes" / "tiny.yaml"


def tiny(world_dir, assets_dir, run_root, *extra: str):
    """The shipped tiny recipe pointed at the session's world, assets and a run root."""
    overrides = [
        f"model.path={assets_dir}",
        f"defaults.data.root={world_dir}",
        f"run_root={run_root}",
        *extra,
    ]
    return load_recipe(TINY, overrides)


@pytest.mark.slow
def test_three_stages_chain_exports(tiny_run, small_world_dir):
    """The shipped recipe's stages chained (each starts from the previous export), with held-out validation,
    wandb, the export check and the in-training benchmarks, read from the session's `tiny_run`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    recipe, paths, exports = tiny_run.recipe, tiny_run.paths, tiny_run.exports
    assert list(exports) == ["align", "pretrain", "sft"]
    for stage, export in exports.items():
        last = recipe.stages[stage].train.max_steps
        assert (export / "config.json").is_file()
        rows = [json.loads(x) for x in (paths.run_dir / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, last + 1)) and all(r["loss"] > 0 for r in rows)
        assert json.loads((paths.run_dir / stage / "export_check.json").read_text())["ok"]
    # Held-out loss per source every `validation.every` steps and at the last, from the held-out rows.
    for stage in exports:
        last = recipe.stages[stage].train.max_steps
        every = min(recipe.stages[stage].validation.every, last)
        rows = {r["step"]: r for r in map(json.loads, (paths.run_dir / stage / "metrics.jsonl").open())}
        found = json.loads((paths.run_dir / stage / "validation.json").read_text())
        assert "val_loss" not in rows[1] and math.isfinite(rows[last]["val_loss"])
        assert {k for k in rows[every] if k.startswith("val_loss/")} == {
            f"val_loss/{name}" for name, f in found.items() if f["rows"]
        }
    # wandb (offline): one run per stage, holding the same steps and losses as metrics.jsonl.
    for stage in exports:
        last = recipe.stages[stage].train.max_steps
        (run_file,) = (paths.run_dir / stage / "wandb").glob("offline-run-*/run-*.wandb")
        logged = {r["_step"]: r for r in history(run_file)}
        jsonl = {r["step"]: r for r in map(json.loads, (paths.run_dir / stage / "metrics.jsonl").open())}
        assert sorted(logged) == list(range(1, last + 1))
        assert all(logged[s]["loss"] == pytest.approx(jsonl[s]["loss"]) for s in logged)
        assert logged[last]["val_loss"] == pytest.approx(jsonl[last]["val_loss"])
    sft_last = recipe.stages["sft"].train.max_steps
    assert_eval_matches_export(paths.run_dir / "sft", sft_last, TINY_RUN_EVALUATION, small_world_dir)
    # Stage 3 trained the LLM on text-only instructions (30% of its tokens over hundreds of steps), so
    # their per-source loss was logged.
    assert any(
        "loss/text_sft" in json.loads(x)
        for x in (paths.run_dir / "sft" / "metrics.jsonl").read_text().splitlines()
    )
    model = AutoModelForImageTextToText.from_pretrained(str(exports["sft"])).eval()
    processor = AutoProcessor.from_pretrained(str(exports["sft"]))
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is it?"}]}],
        add_generation_prompt=True,
    )
    image = torch.zeros(64, 64, 3, dtype=torch.uint8).numpy()
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_stage_without_previous_export_is_refused_before_work(ray_session, world_dir, assets_dir, tmp_path):
    recipe = tiny(world_dir, assets_dir, tmp_path)
    with pytest.raises(RecipeError, match="align.*export, which does not exist"):
        run_stage(recipe, "pretrain", run_paths(recipe, "orphan", None))
    # The first stage started from an export instead (a Tune trial's `start_from`) must find it too.
    with pytest.raises(
        RecipeError, match=f"'align' starts from the export it was given.*{tmp_path / 'gone'}"
    ):
        run_stage(recipe, "align", run_paths(recipe, "orphan", None), start_from=tmp_path / "gone")
    assert not (tmp_path / "orphan" / "pretrain" / "metrics.jsonl").exists()


def test_missing_model_path_is_refused_before_work(ray_session, world_dir, assets_dir, tmp_path):
    recipe = tiny(world_dir, assets_dir, tmp_path, f"model.path={tmp_path / 'nope'}")
    with pytest.raises(RecipeError, match="model.path"):
        run_stage(recipe, "align", run_paths(recipe, "nomodel", None))
