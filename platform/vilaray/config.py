"""Typed recipe schema (pydantic), YAML loading and dotted command-line overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vilaray.model.spec import FreezeSchedule, ModelSpec
from vilaray.train.spec import TrainConfig


class RecipeError(ValueError):
    """A recipe that cannot run: raised before any work starts, naming the key at fault."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(Strict):
    """One corpus: a reader format, where its files are, and how often it is repeated."""

    format: str
    paths: list[str] = Field(min_length=1)
    image_root: str | None = None
    # Small sources (text-only instructions) are repeated rather than exhausted; the mixture stops
    # when the first source runs out of its (repeated) rows, so repetition is how a source is kept.
    epochs: int = Field(1, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from vilaray.data.readers import READERS

        READERS.get(value)  # raises naming the choices
        return value


class DataConfig(Strict):
    """The mixture and how it is tokenized, packed and streamed."""

    root: str = "artifacts/shapes"
    sources: dict[str, SourceConfig] = Field(min_length=1)
    # Share of non-pad tokens per source; normalised, so only ratios matter.
    mix: dict[str, float]
    # shortest: stop when the first source has used up its epochs (every source keeps its weight to the
    # end). longest: go on until every source is used up, dropping each as it runs dry (all data read once).
    stop_on: Literal["shortest", "longest"] = "shortest"
    seq_len: int = Field(2048, ge=16)
    packing: bool = True
    max_images_per_doc: int = Field(4, ge=0)
    max_images_per_row: int = Field(8, ge=1)
    pack_window: int = Field(256, ge=1)
    # Shard rows (files / row groups) one actor call reads; packing windows span them.
    shards_per_call: int = Field(4, ge=1)
    # Rows per block after packing; micro-batch sized so `mix` interleaves sources within a batch.
    block_rows: int = Field(4, ge=1)
    local_shuffle_buffer: int = Field(64, ge=0)
    # Read+tokenize+pack actors per source (an autoscaling pool of 1..N) and the CPUs each one claims.
    encode_actors: int = Field(1, ge=1)
    encode_cpus: float = Field(1.0, gt=0)
    # Refused from the image header, before decoding: a decompression bomb costs nothing.
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    # Documents longer than this (characters) are skipped as `oversized` instead of tokenized.
    max_doc_chars: int = Field(1_000_000, ge=1)
    quarantine_samples: int = Field(20, ge=0)
    # Fraction of every source's samples kept out of training for validation, chosen by a hash of the
    # sample id (vilaray.data.holdout): the same documents stay out across runs, epochs, stages and workers.
    holdout: float = Field(0.0, ge=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _mix_names_sources(self) -> DataConfig:
        for name, weight in self.mix.items():
            if name not in self.sources:
                raise ValueError(f"mix.{name}: no source named {name!r}; sources are {sorted(self.sources)}")
            if weight < 0:
                raise ValueError(f"mix.{name}: weight must be >= 0, got {weight}")
        if sum(self.mix.values()) <= 0:
            raise ValueError("mix: at least one weight must be > 0")
        if self.max_images_per_doc > self.max_images_per_row:
            raise ValueError(
                f"max_images_per_doc ({self.max_images_per_doc}) must be <= max_images_per_row "
                f"({self.max_images_per_row}): a document must fit in one row"
            )
        return self

    def weights(self) -> dict[str, float]:
        total = sum(self.mix.values())
        return {name: w / total for name, w in self.mix.items() if w > 0}

    def resolve(self, path: str) -> str:
        """A source path relative to `root`, unless it is absolute or a URI."""
        if "://" in path or Path(path).is_absolute():
            return path
        if "://" in self.root:
            return self.root.rstrip("/") + "/" + path
        return str(Path(self.root) / path)


class ValidationConfig(Strict):
    """Held-out loss every `every` steps (0: never) on up to `rows_per_source` packed rows of each source's
    held-out samples (`data.holdout`), logged per source beside the training loss."""

    every: int = Field(0, ge=0)
    rows_per_source: int = Field(8, ge=1)


class EvaluationConfig(Strict):
    """A small benchmark run inside training every `every` steps (0: never): the suite's tasks at `shots`,
    `limit` samples each, decoded greedily by the training engine on all ranks in lockstep; the scores are
    logged with the training metrics as `eval/<task>/<k>-shot` (a Tune objective)."""

    every: int = Field(0, ge=0)
    suite: str = "evals/shapes.yaml"
    # None: every task in the suite. data_root None: the suite's own `root`.
    tasks: list[str] | None = None
    shots: list[int] = Field(default_factory=lambda: [0])
    limit: int = Field(16, ge=1)
    data_root: str | None = None
    # Prompts decoded together per rank (generation has no KV cache here: rows are re-run per token).
    batch_size: int = Field(8, ge=1)


class StageConfig(Strict):
    """One training stage: its data mixture, which components train and how, and the optimisation."""

    data: DataConfig
    freeze: FreezeSchedule = FreezeSchedule()
    train: TrainConfig = TrainConfig()
    validation: ValidationConfig = ValidationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="after")
    def _validation_has_rows(self) -> StageConfig:
        if self.validation.every and not self.data.holdout:
            raise ValueError(
                "validation.every > 0 needs data.holdout > 0: validation scores the held-out samples"
            )
        return self


class Recipe(Strict):
    name: str
    # The run's seed: the default of every stage's `data.seed` (shard order, packing, shuffle) and
    # `train.seed` (initialisation), and of the data-only recipe's `data.seed` (`_apply_seed`).
    seed: int = 0
    # The model the first stage starts from; stage N+1 starts from stage N's export.
    model: ModelSpec = ModelSpec(path="artifacts/tiny-vlm")
    # A data-only recipe (prepare_data, benchmarks) gives `data`; a training recipe gives ordered `stages`
    # (each stage its own data). `defaults` in the YAML is merged under every stage before validation.
    data: DataConfig | None = None
    stages: dict[str, StageConfig] = Field(default_factory=dict)
    run_root: str = "runs"

    @model_validator(mode="after")
    def _has_data(self) -> Recipe:
        if self.data is None and not self.stages:
            raise ValueError("a recipe needs `data` or `stages`")
        return self

    def data_for(self, stage: str | None = None) -> DataConfig:
        """The data section of `stage`, or the recipe's own (else the first stage's) when stage is None."""
        if stage is not None:
            if stage not in self.stages:
                raise RecipeError(
                    f"stage {stage!r} not in recipe {self.name!r}; stages are {list(self.stages)}"
                )
            return self.stages[stage].data
        return self.data if self.data is not None else next(iter(self.stages.values())).data


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = (
            merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
        )
    return out


def _apply_defaults(raw: dict) -> dict:
    defaults = raw.pop("defaults", None) or {}
    if not isinstance(defaults, dict):
        raise RecipeError("defaults: must be a mapping of stage sections")
    stages = raw.get("stages") or {}
    if isinstance(stages, dict):
        raw["stages"] = {name: merge(defaults, body or {}) for name, body in stages.items()}
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"override {item!r}: expected dotted.key=value")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise RecipeError(f"override {item!r}: empty key segment")
    return keys, yaml.safe_load(raw)


def set_key(raw: dict, keys: list[str], value: Any, label: str) -> None:
    """`raw[k1][k2]...[kn] = value`, creating mappings on the way (`label` names the override in errors)."""
    node = raw
    for depth, k in enumerate(keys[:-1]):
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"override {label!r}: {'.'.join(keys[: depth + 1])} is not a mapping")
        node = child
    node[keys[-1]] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        set_key(out, keys, value, item)
    return out


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid recipe {origin}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"  {loc or '<root>'}: {msg}{shown}")
    return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: top level must be a mapping")
    return recipe_from_dict(apply_overrides(raw, overrides or []), origin=str(path))


def _apply_seed(raw: dict) -> dict:
    """The top-level `seed` fills every data and train section's `seed` that the recipe leaves unset: one
    `--set seed=N` re-seeds the whole run, and a seed given in a section (or under `defaults`) still wins."""
    if "seed" not in raw:
        return raw
    sections = [raw.get("data")]
    stages = raw.get("stages")
    for body in stages.values() if isinstance(stages, dict) else ():
        if isinstance(body, dict):
            if body.get("train") is None:
                body["train"] = {}  # an absent `train` is TrainConfig's defaults
            sections += [body.get("data"), body["train"]]
    for section in sections:
        if isinstance(section, dict):
            section.setdefault("seed", raw["seed"])
    return raw


def recipe_from_dict(raw: dict, origin: str = "<dict>") -> Recipe:
    raw = _apply_seed(_apply_defaults(copy.deepcopy(raw)))
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_format_errors(e, origin)) from None
