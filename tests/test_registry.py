"""The one registry type: duplicates refused, unknown names listed, every extension point built on it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vilaray.config import RecipeError, load_recipe
from vilaray.registry import Registry, UnknownName

ROOT = Path(__file__).resolve().parent.parent


def test_duplicate_name_refused_naming_kind_and_name():
    reg: Registry[int] = Registry("widget", {"a": 1})
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.add("a", 2)
    with pytest.raises(ValueError, match="widget 'a'"):
        reg.register("a")(3)
    assert reg.get("a") == 1


def test_unknown_name_lists_sorted_choices_and_is_a_key_error():
    reg: Registry[int] = Registry("widget", {"b": 2, "a": 1})
    with pytest.raises(KeyError) as err:
        reg.get("zz")
    assert isinstance(err.value, ValueError) and isinstance(err.value, UnknownName)
    assert str(err.value) == "unknown widget 'zz'; expected one of ['a', 'b']"


def test_decorator_returns_the_object_and_order_is_kept():
    reg: Registry[object] = Registry("widget")

    @reg.register("second")
    def f():
        return 1

    class C:
        pass

    assert reg.register("first")(C) is C
    assert f() == 1 and reg.get("second") is f
    assert list(reg) == ["second", "first"] and reg.names() == ["first", "second"]
    assert reg.items() == [("second", f), ("first", C)] and reg.values() == [f, C]
    assert "first" in reg and "third" not in reg and len(reg) == 2


@pytest.mark.parametrize(
    "where",
    [
        "vilaray.data.readers:READERS",
        "vilaray.model.projectors:PROJECTORS",
        "vilaray.train.strategy:STRATEGIES",
        "vilaray.model.freeze:MODES",
        "vilaray.bench:BENCHMARKS",
        "vilaray.bench.train:SHAPES",
        "vilaray.train.runner:LAUNCHERS",
        "vilaray.evals.harness:METRICS",
        "vilaray.evals.tasks:LOADERS",
        "vilaray.model.build:SAVED_FORMATS",
        "vilaray.data.pipeline:STOP_RULES",
        "vilaray.synth.render:DRAWERS",
        "vilaray.synth.documents:TRANSITIONS",
        "vilaray.synth.documents:STYLES",
        "vilaray.synth.products:PRODUCTS",
        "vilaray.synth.products:PHOTO_PRODUCTS",
        "vilaray.synth.world:TEXT_SOURCES",
        "vilaray.synth.language:CAPTIONS",
        "vilaray.synth.language:QUESTIONS",
        "vilaray.synth.chats:CHAT_STYLES",
        "vilaray.synth.facts:PARAGRAPHS",
        "vilaray.synth.manifest:SCALES",
    ],
)
def test_extension_points_are_registries(where):
    module, name = where.split(":")
    reg = getattr(importlib.import_module(module), name)
    assert isinstance(reg, Registry) and len(reg) > 0


def test_unknown_strategy_refused_at_recipe_load_naming_the_key():
    with pytest.raises(RecipeError) as err:
        load_recipe(ROOT / "jobs" / "recipes" / "tiny.yaml", ["stages.sft.train.strategy=nope"])
    assert "stages.sft.train.strategy: unknown strategy 'nope'; expected one of ['deepspeed']" in str(
        err.value
    )


@pytest.mark.parametrize("module", ["vilaray.config", "vilaray.model.geometry"])
def test_recipe_schema_and_image_geometry_import_no_torch(module):
    # The strategy check imports the strategies (torch) only when a recipe names one; the data side reads
    # image token counts from the geometry table, not from the projectors' torch modules.
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "platform")},
    )


def test_every_projector_takes_its_token_count_from_the_geometry_table():
    from vilaray.model.geometry import IMAGE_TOKENS, ImageGeometry
    from vilaray.model.projectors import PROJECTORS

    assert PROJECTORS.names() == IMAGE_TOKENS.names()
    for name in PROJECTORS.names():
        for grid in (7, 8, 27):
            assert PROJECTORS.get(name).num_tokens(grid) == IMAGE_TOKENS.get(name)(grid)
    assert ImageGeometry(224, 8, "downsample2x2").tokens_per_image == 14 * 14  # 28x28 grid merged 2x2
    assert ImageGeometry(216, 8, "downsample2x2").tokens_per_image == 14 * 14  # 27x27 padded to 28x28
