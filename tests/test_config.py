"""Recipe schema: bad recipes fail before any work, naming the key; dotted overrides apply."""

from __future__ import annotations

import pytest
import yaml
from conftest import TINY_RECIPE, base_recipe
from vilaray.config import RecipeError, load_recipe


def write(tmp_path, recipe: dict):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_overrides_apply_with_types(tmp_path):
    path = write(tmp_path, base_recipe(tmp_path, tmp_path, tmp_path))
    r = load_recipe(path, ["data.mix.interleaved=0.5", "data.seq_len=1024", "data.packing=false"])
    assert r.data.mix["interleaved"] == 0.5 and r.data.seq_len == 1024 and r.data.packing is False
    assert abs(sum(r.data.weights().values()) - 1) < 1e-9


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.sed=1", "data.sed"),
        ("data.seq_len=abc", "data.seq_len"),
        ("data.seq_len=4", "data.seq_len"),
        ("data.mix.video=0.3", "mix.video: no source named 'video'"),
        ("data.sources.pairs.format=tfrecord", "data.sources.pairs.format"),
        ("data.sources.text.epochs=0", "data.sources.text.epochs"),
        ("data.max_images_per_doc=99", "max_images_per_doc"),
        ("model.pth=x", "model.pth"),
    ],
)
def test_bad_values_name_the_key(tmp_path, override, needle):
    path = write(tmp_path, base_recipe(tmp_path, tmp_path, tmp_path))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, [override])
    assert needle in str(err.value)


def test_malformed_override_and_missing_file(tmp_path):
    path = write(tmp_path, base_recipe(tmp_path, tmp_path, tmp_path))
    with pytest.raises(RecipeError, match="expected dotted.key=value"):
        load_recipe(path, ["data.seq_len"])
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_staged_recipe_defaults_and_batch_check():
    from pathlib import Path

    tiny = Path(__file__).resolve().parent.parent / "jobs" / "recipes" / "tiny.yaml"
    r = load_recipe(tiny, ["defaults.train.micro_batch_size=3", "stages.sft.train.grad_accum=2"])
    assert list(r.stages) == ["align", "pretrain", "sft"]
    assert r.stages["align"].train.micro_batch_size == 3 and r.stages["sft"].train.grad_accum == 2
    assert r.stages["align"].data.seq_len == 1024  # from defaults
    with pytest.raises(RecipeError, match="global_batch_size 10 != micro_batch_size"):
        load_recipe(tiny, ["stages.align.train.global_batch_size=10"])
    with pytest.raises(RecipeError, match="stages.pretrain.freeze: projector: mode lora is not allowed"):
        load_recipe(tiny, ["stages.pretrain.freeze.projector.mode=lora"])


def section_seeds(recipe) -> dict[tuple[str, str], int]:
    return {
        (name, part): getattr(st, part).seed
        for name, st in recipe.stages.items()
        for part in ("data", "train")
    }


def test_the_recipe_seed_seeds_every_stage_unless_a_section_pins_its_own(tmp_path):
    """`--set seed=N` re-seeds a run: data order and initialisation alike, in every stage."""
    tiny = TINY_RECIPE
    assert set(section_seeds(load_recipe(tiny)).values()) == {0}
    assert set(section_seeds(load_recipe(tiny, ["seed=7"])).values()) == {7}
    pinned = section_seeds(load_recipe(tiny, ["seed=7", "stages.sft.data.seed=2", "defaults.train.seed=5"]))
    assert pinned.pop(("sft", "data")) == 2
    assert {v for (_, part), v in pinned.items() if part == "train"} == {5}
    assert {v for (_, part), v in pinned.items() if part == "data"} == {7}
    data_only = write(tmp_path, base_recipe(tmp_path, tmp_path, tmp_path) | {"seed": 3})
    assert load_recipe(data_only).data.seed == 3
