"""The Ray Data pipeline: per-source read -> tokenize (actor pool) -> pack, then a token-weighted `Dataset.mix`.

Order and stopping rule: each source's shards (files or Parquet row groups) are shuffled with a seed per
epoch and repeated `epochs` times; packed rows come out of each packing window in a seeded order, and the
consumer adds a local shuffle buffer. By default (`data.stop_on: shortest`) the mixture stops when the
first source has used up all its epochs, so every source keeps its weight to the end; give small sources
(text-only instructions) more epochs rather than letting them run dry. `stop_on: longest` reads every
source to its end instead, dropping each from the mix as it runs dry.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pyarrow as pa
import ray

from vilaray.config import DataConfig, RecipeError, SourceConfig
from vilaray.data import schema
from vilaray.data.arrow import rows_to_table
from vilaray.data.holdout import held_out
from vilaray.data.pack import PackConfig, pack_samples, packing_efficiency, single_rows
from vilaray.data.quarantine import LedgerClient
from vilaray.data.readers import Shard, get_reader
from vilaray.data.sample import Reject
from vilaray.data.text_tokenizer import TextTokenizer
from vilaray.data.tokenize import EncodeConfig, SampleEncoder
from vilaray.model.geometry import ImageGeometry
from vilaray.registry import Registry

STOP_RULES = Registry(
    "stop rule",
    {
        "shortest": ray.data.MixStoppingCondition.STOP_ON_SHORTEST,
        "longest": ray.data.MixStoppingCondition.STOP_ON_LONGEST_DROP,
    },
)


@dataclass(frozen=True)
class PipelineSpec:
    """Everything a worker needs to tokenize and pack, picklable and independent of the recipe object."""

    tokenizer_dir: str
    geometry: ImageGeometry
    encode: EncodeConfig
    pack: PackConfig
    packing: bool
    seed: int
    holdout: float = 0.0
    # "train" streams the samples outside the holdout, "validation" only those inside it.
    split: Literal["train", "validation"] = "train"

    def keeps(self, sample: dict) -> bool:
        return held_out(sample["id"], self.holdout) == (self.split == "validation")

    def local_encoder(self) -> SampleEncoder:
        """The tokenizer + encoder in this process (actors, driver-side pilots and validation sets)."""
        return SampleEncoder(TextTokenizer(self.tokenizer_dir), self.geometry, self.encode)

    @classmethod
    def build(cls, data: DataConfig, tokenizer_dir: str, geometry: ImageGeometry) -> PipelineSpec:
        """The spec for `data` served to a model with this tokenizer and image geometry."""
        tok = TextTokenizer(tokenizer_dir)
        if tok.pad_token_id is None:
            raise ValueError(f"tokenizer {tokenizer_dir} has no pad token")
        return cls(
            tokenizer_dir=str(tokenizer_dir),
            geometry=geometry,
            encode=EncodeConfig(
                data.seq_len, data.max_images_per_doc, data.max_image_pixels, data.max_doc_chars
            ),
            pack=PackConfig(data.seq_len, data.max_images_per_row, tok.pad_token_id),
            packing=data.packing,
            seed=data.seed,
            holdout=data.holdout,
        )


def plan_source(name: str, src: SourceConfig, data: DataConfig) -> list[Shard]:
    """Validate and list one source's shards; raises SourceError before any work starts."""
    image_root = data.resolve(src.image_root) if src.image_root else None
    reader = get_reader(src.format)
    return reader.plan(name, [data.resolve(p) for p in src.paths], image_root, dict(src.options))


def shard_schedule(shards: list[Shard], epochs: int, seed: int) -> list[dict]:
    """Shards repeated `epochs` times, each epoch in its own seeded order."""
    rows = []
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        for i in rng.permutation(len(shards)):
            rows.append({"shard": json.dumps(shards[i].to_row()), "epoch": epoch})
    return rows


def iter_shard_samples(shard: Shard, client: LedgerClient) -> Iterator[dict]:
    for item in get_reader(shard.format).read(shard):
        if isinstance(item, Reject):
            client.reject(item)
        else:
            yield item


def windows(samples: Iterator[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive windows of `size` samples, the last one partial."""
    while window := list(itertools.islice(samples, size)):
        yield window


class SourceEncoder:
    """Read -> tokenize -> pack as one object, with bad records going to `client`: what the pipeline's
    actors run, and the driver-side pilot, validation set and benchmarks run the same way."""

    def __init__(self, spec: PipelineSpec, client: LedgerClient):
        self.spec = spec
        self.client = client
        self.encoder = spec.local_encoder()

    @classmethod
    def local(cls, spec: PipelineSpec) -> SourceEncoder:
        """In this process, counting bad records nowhere: the training stream's own ledger counts them
        (a driver-side pass over the same files would count them twice)."""
        from vilaray.data.quarantine import Quarantine

        return cls(spec, LedgerClient(Quarantine(None)))

    def samples(self, shards: list[Shard], split: bool = True) -> Iterator[dict]:
        """The shards' samples in order; with `split`, only those of the spec's train/validation split."""
        samples = (s for sh in shards for s in iter_shard_samples(sh, self.client))
        return (s for s in samples if self.spec.keeps(s)) if split else samples

    def encode(self, samples: list[dict]) -> list[dict]:
        return encode_rows(self.encoder, samples, self.client)

    def pack(self, encoded: list[dict]) -> list[dict]:
        return pack_rows(encoded, self.spec)

    def packed_windows(self, samples: Iterator[dict], window: int) -> Iterator[list[dict]]:
        """Packed rows per window of `window` samples (a window's rows may be none)."""
        for w in windows(samples, window):
            yield self.pack(self.encode(w))


class EncodeStage:
    """Ray Data actor: loads the tokenizer once; each call reads `shards_per_call` shards, tokenizes and packs.

    Reading inside the actor keeps raw samples (encoded image bytes and all) out of the object store:
    only packed training rows leave the process, and no separate read tasks compete with the actors for
    CPUs. Samples are packed in windows of `pack_window`; the call's last, partial window is packed too,
    so nothing is held back across calls (an actor has no end-of-stream hook to flush it).
    """

    def __init__(self, spec: PipelineSpec, ledger, pack_window: int):
        self.window = pack_window
        self.source = SourceEncoder(spec, LedgerClient(ledger))

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        # Windows run across the call's shards, so small shards (a few dozen documents) still pack well.
        shards = [Shard.from_row(json.loads(row)) for row in batch.column("shard").to_pylist()]
        for rows in self.source.packed_windows(self.source.samples(shards), self.window):
            if rows:
                yield rows_to_table(rows, schema.ROW)
        self.source.client.flush()


def encode_rows(encoder: SampleEncoder, samples: list[dict], client: LedgerClient) -> list[dict]:
    out = []
    for sample in samples:
        row = encoder(sample)
        if isinstance(row, Reject):
            client.reject(row)
            continue
        for key, n in row.pop("_events").items():
            client.event(row["source"], key, n)
        out.append(row)
    return out


def window_seed(seed: int, sample_ids: list[str]) -> np.random.Generator:
    digest = hashlib.blake2b("\x00".join(sample_ids[:4]).encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def pack_rows(samples: list[dict], spec: PipelineSpec) -> list[dict]:
    if not spec.packing:
        return single_rows(samples, spec.pack)
    return pack_samples(samples, spec.pack, window_seed(spec.seed, [s["id"] for s in samples]))


def source_dataset(
    shards: list[Shard], src: SourceConfig, data: DataConfig, spec: PipelineSpec, ledger
) -> ray.data.Dataset:
    rows = shard_schedule(shards, src.epochs, data.seed)
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(
        EncodeStage,
        fn_constructor_args=(spec, ledger, data.pack_window),
        batch_size=data.shards_per_call,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=data.encode_actors),
        num_cpus=data.encode_cpus,
    )
    # Micro-batch-sized blocks: `mix` draws whole blocks, so small blocks are what interleaves sources
    # within a batch rather than across minutes of training.
    return ds.repartition(target_num_rows_per_block=data.block_rows)


def pilot_efficiency(shards: list[Shard], spec: PipelineSpec, window: int, n_windows: int = 4) -> float:
    """Packing efficiency of a source measured on its first few windows, on the driver, with the same code."""
    if not spec.packing:
        return 1.0
    source = SourceEncoder.local(spec)
    want = window * n_windows
    samples = list(itertools.islice(source.samples(shards, split=False), want))
    # Small sources are repeated by epochs in the stream; repeat them here too so windows are full.
    if samples and len(samples) < want:
        samples = (samples * (want // len(samples) + 1))[:want]
    rows = [r for packed in source.packed_windows(iter(samples), window) for r in packed]
    if not rows:
        return 1.0
    return packing_efficiency(sum(r["num_tokens"] for r in rows), len(rows), spec.pack.seq_len)


def check_cpu_budget(data: DataConfig, n_sources: int) -> None:
    """Tokenizer actors hold their CPUs for the whole stream; refuse a recipe whose sources cannot each
    get one, naming the keys to change, instead of waiting forever."""
    if not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0.0)
    # One actor per source must be able to start, or that source's stream never begins.
    needed = n_sources * data.encode_cpus
    if needed > total:
        raise RecipeError(
            f"{n_sources} sources x data.encode_cpus {data.encode_cpus:g} = {needed:g} CPUs for one tokenizer "
            f"actor per source exceeds the cluster's {total:g} CPUs: lower data.encode_cpus or add CPUs"
        )


@dataclass
class Mixture:
    """The mixed, streaming dataset and what it promises: token weights and the row weights fed to `mix`."""

    dataset: ray.data.Dataset
    token_weights: dict[str, float]
    row_weights: dict[str, float]
    pilot_efficiency: dict[str, float]
    spec: PipelineSpec

    def describe(self) -> dict:
        return {
            "token_weights": self.token_weights,
            "row_weights": self.row_weights,
            "pilot_packing_efficiency": self.pilot_efficiency,
        }


@dataclass(frozen=True)
class PlannedData:
    """A data section with its pipeline spec and every source's shards, planned once: what the mixture,
    the prepared shards, the held-out rows and the benchmarks all read (`vilaray.compose` builds it)."""

    config: DataConfig
    spec: PipelineSpec
    plans: dict[str, list[Shard]]

    @classmethod
    def plan(cls, data: DataConfig, spec: PipelineSpec) -> PlannedData:
        """Plan every weighted source, failing on an unreadable one before any work starts."""
        return cls(data, spec, {name: plan_source(name, data.sources[name], data) for name in data.weights()})

    def files(self) -> list[str]:
        return [sh.path for shards in self.plans.values() for sh in shards]

    def split(self, split: Literal["train", "validation"]) -> PlannedData:
        return replace(self, spec=replace(self.spec, split=split))

    def mixture(self, ledger, max_rows: int | None = None) -> Mixture:
        return build_mixture(self, ledger, max_rows)


def source_cap(max_rows: int, weight: float, block_rows: int) -> int:
    """Rows of a source that the mix's first `max_rows` rows can hold. `Dataset.mix` moves one block at a time
    from the input furthest behind `weight x rows so far`, so a source that has given `weight x max_rows +`
    one block has not been drawn from before the mix reached `max_rows` rows; the second block is slack."""
    return math.ceil(weight * max_rows) + 2 * block_rows


def build_mixture(planned: PlannedData, ledger, max_rows: int | None = None) -> Mixture:
    """Each source's stream, weighted by tokens and mixed. With `max_rows` (what a stage can train on),
    each source stops once it has given all it could contribute to that many rows: the same first
    `max_rows` rows, without tokenizing and packing what nobody reads (sources otherwise run ahead of the
    mix until the object store pushes back)."""
    data, spec, plans = planned.config, planned.spec, planned.plans
    token_weights = data.weights()
    # `mix` balances rows; a source whose rows are less full needs proportionally more rows to reach
    # its token share, so row weights are token weights divided by each source's packing efficiency.
    eff = {name: pilot_efficiency(shards, spec, data.pack_window) for name, shards in plans.items()}
    raw = {name: token_weights[name] / max(eff[name], 1e-6) for name in token_weights}
    total = sum(raw.values())
    row_weights = {name: w / total for name, w in raw.items()}
    names = list(token_weights)
    check_cpu_budget(data, len(names))
    datasets = [source_dataset(plans[n], data.sources[n], data, spec, ledger) for n in names]
    if max_rows is not None:
        datasets = [
            ds.limit(source_cap(max_rows, row_weights[n], data.block_rows)) for ds, n in zip(datasets, names)
        ]
    mixed = datasets[0]
    if len(datasets) > 1:
        mixed = datasets[0].mix(
            *datasets[1:],
            weights=[row_weights[n] for n in names],
            stopping_condition=STOP_RULES.get(data.stop_on),
        )
    return Mixture(mixed, token_weights, row_weights, eff, spec)
