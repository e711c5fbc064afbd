"""Held-out validation data: a stable hash split by sample id, and the driver-built held-out rows."""

from __future__ import annotations

import pytest
from conftest import base_recipe
from vilaray.compose import recipe_data
from vilaray.config import RecipeError, load_recipe, recipe_from_dict
from vilaray.data.holdout import held_out
from vilaray.train.validation import build_validation_rows


def test_holdout_is_a_stable_fraction_of_ids():
    ids = [f"src:{i:06d}" for i in range(20000)]
    picked = [i for i in ids if held_out(i, 0.05)]
    assert 0.045 < len(picked) / len(ids) < 0.055
    assert picked == [i for i in ids if held_out(i, 0.05)]  # the same ids every time
    assert set(picked) <= {i for i in ids if held_out(i, 0.2)}  # a larger holdout contains a smaller one
    assert not any(held_out(i, 0.0) for i in ids)


def test_validation_rows_hold_only_held_out_samples_of_every_source(world_dir, assets_dir, tmp_path):
    raw = base_recipe(world_dir, assets_dir, tmp_path, seq_len=256)
    raw["data"]["holdout"] = 0.1
    recipe = recipe_from_dict(raw)
    table, found = build_validation_rows(recipe_data(recipe), rows_per_source=3)
    rows = table.to_pylist()
    assert set(found) == set(recipe.data.weights())
    assert all(0 < f["rows"] <= 3 and f["loss_tokens"] > 0 for f in found.values()), found
    assert {r["source"] for r in rows} == set(found) and len(rows) == sum(f["rows"] for f in found.values())
    ids = [i for r in rows for i in r["sample_ids"]]
    assert ids and all(held_out(i, 0.1) for i in ids)
    again, _ = build_validation_rows(recipe_data(recipe), rows_per_source=3)
    assert again.equals(table)  # the same rows on every call: validation curves compare across runs


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("stages.pretrain.data.holdout=0", "validation.every > 0 needs data.holdout > 0"),
        ("defaults.data.holdout=1.5", "holdout"),
        ("defaults.validation.rows_per_source=0", "validation.rows_per_source"),
        ("defaults.train.wandb.mode=cloud", "train.wandb.mode"),
        ("defaults.train.wandb.entity=me", "train.wandb.project"),
    ],
)
def test_bad_validation_and_wandb_settings_name_the_key(override, needle):
    from pathlib import Path

    tiny = Path(__file__).resolve().parent.parent / "jobs" / "recipes" / "tiny.yaml"
    with pytest.raises(RecipeError) as err:
        load_recipe(tiny, [override])
    assert needle in str(err.value)
