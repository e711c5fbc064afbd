"""Typed recipe schema (pydantic), YAML loading and dotted command-line overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


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

        if value not in READERS:
            raise ValueError(f"unknown format {value!r}; expected one of {sorted(READERS)}")
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
    # Rows per block after packing; micro-batch sized so `mix` interleaves sources within a batch.
    block_rows: int = Field(4, ge=1)
    local_shuffle_buffer: int = Field(64, ge=0)
    read_batch: int = Field(64, ge=1)  # samples per table a reader emits
    # Tokenize+pack actors per source (an autoscaling pool of 1..N) and the CPUs each one claims.
    encode_actors: int = Field(1, ge=1)
    encode_cpus: float = Field(1.0, gt=0)
    # Refused from the image header, before decoding: a decompression bomb costs nothing.
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    # Documents longer than this (characters) are skipped as `oversized` instead of tokenized.
    max_doc_chars: int = Field(1_000_000, ge=1)
    quarantine_samples: int = Field(20, ge=0)
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
        return str(Path(self.root) / path)


class ModelConfig(Strict):
    """Where the VLM (and its tokenizer) come from; the data pipeline reads image geometry from it."""

    path: str = "artifacts/tiny-vlm"
    tokenizer: str | None = None


class Recipe(Strict):
    name: str
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig
    run_root: str = "runs"


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"override {item!r}: expected dotted.key=value")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise RecipeError(f"override {item!r}: empty key segment")
    return keys, yaml.safe_load(raw)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for depth, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"override {item!r}: {'.'.join(keys[: depth + 1])} is not a mapping")
            node = child
        node[keys[-1]] = value
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


def recipe_from_dict(raw: dict, origin: str = "<dict>") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_format_errors(e, origin)) from None
