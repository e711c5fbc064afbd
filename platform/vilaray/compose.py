"""The composition root of a stage: the model it starts from, what its data needs from that model (tokenizer,
image geometry) and every source planned once; data code never reaches into the model itself."""

from __future__ import annotations

from dataclasses import dataclass

from vilaray.config import DataConfig, Recipe, StageConfig
from vilaray.data.pipeline import PipelineSpec, PlannedData
from vilaray.model.meta import MetaReport, build_on_meta, spec_geometry
from vilaray.model.spec import ModelSpec


def planned_data(data: DataConfig, model: ModelSpec) -> PlannedData:
    """`data` as served to `model`: its tokenizer and image geometry (configs only), each source planned."""
    spec = PipelineSpec.build(data, model.tokenizer_dir, spec_geometry(model))
    return PlannedData.plan(data, spec)


def recipe_data(recipe: Recipe, stage: str | None = None) -> PlannedData:
    """A recipe's data section (`Recipe.data_for(stage)`) for the recipe's own model: data preparation and
    the benchmarks, which have no previous stage to start from."""
    return planned_data(recipe.data_for(stage), recipe.model)


@dataclass(frozen=True)
class StagePlan:
    """One stage, resolved once on the driver before any worker starts."""

    recipe: Recipe
    stage: str
    model: ModelSpec
    data: PlannedData
    shapes: MetaReport

    @property
    def config(self) -> StageConfig:
        return self.recipe.stages[self.stage]


def plan_stage(recipe: Recipe, stage: str, model: ModelSpec) -> StagePlan:
    """Check that the model's shapes fit (meta device, no weights) and plan the stage's data for it."""
    _, shapes = build_on_meta(model)
    return StagePlan(recipe, stage, model, planned_data(recipe.stages[stage].data, model), shapes)
