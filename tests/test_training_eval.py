"""In-training benchmarks: the suite's prompts encoded on the driver the way training rows are."""

from __future__ import annotations

import pytest
from _training_eval import SUITE
from conftest import base_recipe
from vilaray.compose import recipe_data
from vilaray.config import EvaluationConfig, RecipeError, recipe_from_dict
from vilaray.train.evaluation import build_eval_bundle


def recipe(world_dir, assets_dir, tmp_path, seq_len: int):
    return recipe_from_dict(base_recipe(world_dir, assets_dir, tmp_path, seq_len=seq_len))


def test_prompts_encoded_like_training_rows(world_dir, assets_dir, tmp_path):
    r = recipe(world_dir, assets_dir, tmp_path, 1024)
    cfg = EvaluationConfig(every=1, suite=str(SUITE), data_root=str(world_dir), limit=4, shots=[0, 4])
    bundle = build_eval_bundle(recipe_data(r).spec, cfg)
    assert [t.task.name for t in bundle.tasks] == ["shapes_vqa", "shapes_captions", "shapes_text_mc"]
    assert len(bundle.prompts) == 3 * 2 * 4 and not any(bundle.skipped.values())
    from transformers import AutoTokenizer

    image_token = AutoTokenizer.from_pretrained(str(assets_dir)).convert_tokens_to_ids("<image>")
    for p in bundle.prompts:
        task, shots, _ = p.key
        n_images = 0 if task == "shapes_text_mc" else shots + 1
        assert len(p.images) == n_images  # k-shot prompts keep every image (no per-document cap)
        assert int((p.input_ids == image_token).sum()) == n_images * 64  # 64 tokens per 64px image
        assert bool(p.choices) == (task == "shapes_text_mc") and all(len(c) for c in p.choices)


def test_prompt_that_does_not_fit_is_counted_and_unknown_task_refused(world_dir, assets_dir, tmp_path):
    r = recipe(world_dir, assets_dir, tmp_path, 128)  # 4-shot VQA prompts (5 images x 64 tokens) do not fit
    cfg = EvaluationConfig(
        every=1, suite=str(SUITE), data_root=str(world_dir), limit=3, shots=[0, 4], tasks=["shapes_vqa"]
    )
    bundle = build_eval_bundle(recipe_data(r).spec, cfg)
    assert bundle.skipped == {"shapes_vqa": 3} and len(bundle.prompts) == 3
    with pytest.raises(RecipeError, match=r"evaluation.tasks: \['nope'\] not in"):
        build_eval_bundle(recipe_data(r).spec, cfg.model_copy(update={"tasks": ["nope"]}))
