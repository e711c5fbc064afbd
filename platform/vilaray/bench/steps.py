"""What the step-timing benchmarks (train, attention) share: model shapes, batches with the shapes world's
length mix, the benchmark VLM and a timed step loop."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vilaray.registry import Registry
from vilaray.train.flops import FlopModel

MODELS = Path(__file__).resolve().parents[3] / "jobs" / "recipes" / "models"

TINY_VISION = {
    "model_type": "siglip_vision_model",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}
TINY_LM = {
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "tie_word_embeddings": True,
}


def _shipped(name: str) -> dict:
    return json.loads((MODELS / name / "config.json").read_text())


# Model shapes -> (vision tower config, LM config, projector), read on the driver (the repo's recipe folder
# is not shipped to Ray workers). Weights are random: only the shapes matter.
SHAPES: Registry[Callable[[], tuple[dict, dict, str]]] = Registry(
    "shape",
    {
        "qwen2-0.5b-siglip": lambda: (
            _shipped("siglip-base-patch16-224"),
            _shipped("qwen2-0.5b"),
            "mlp2x_gelu",
        ),
        # A CPU-sized stand-in, so the harness itself is tested on every machine.
        "tiny": lambda: (TINY_VISION, TINY_LM, "mlp2x_gelu"),
    },
)


# ------------------------------------------------------------------------------------------ batches


def world_doc_lengths(root: str, seed: int) -> list[int]:
    """Text-token lengths of the shapes world's documents, captions and text samples, by the tiny
    tokenizer: the length mix packed rows are built from."""
    from vilaray.compose import recipe_data
    from vilaray.config import recipe_from_dict
    from vilaray.data.pipeline import SourceEncoder
    from vilaray.synth.assets import build_assets
    from vilaray.synth.world import build_world

    world = build_world(Path(root) / "world-tiny", seed=seed, scale="tiny").root
    assets = build_assets(world, Path(root) / "tiny-vlm-tiny")
    sources = {
        "pairs": {"format": "pairs_parquet", "paths": ["pairs"]},
        "docs": {"format": "obelics_parquet", "paths": ["obelics"]},
        "text": {"format": "text_jsonl", "paths": ["text"]},
    }
    recipe = recipe_from_dict(
        {
            "name": "bench-lengths",
            "model": {"path": str(assets)},
            "data": {"root": str(world), "sources": sources, "mix": dict.fromkeys(sources, 1.0)},
        }
    )
    planned = recipe_data(recipe)
    source = SourceEncoder.local(planned.spec)
    per_image = source.spec.geometry.tokens_per_image
    lengths = []
    for shards in planned.plans.values():
        for shard in shards:
            for row in source.encode(list(source.samples([shard]))):
                lengths.append(int(row["num_tokens"]) - len(row["images"]) * per_image)
    return [n for n in lengths if n > 1]


def make_batch(
    rows: int,
    seq_len: int,
    vocab: int,
    image_token: int,
    tokens_per_image: int,
    image_size: int,
    lengths: list[int] | None,
    seed: int,
) -> dict:
    """One step's batch: every row `seq_len` tokens holding one image at its start. Packed (lengths given):
    documents of the world's length mix, position ids restarting per document, the last one cut to fit;
    unpacked: the row is one document."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, image_token, size=(rows, seq_len))
    ids[:, :tokens_per_image] = image_token
    pos = np.empty((rows, seq_len), dtype=np.int64)
    for r in range(rows):
        start = 0
        while start < seq_len:
            n = seq_len - start if lengths is None else int(rng.choice(lengths))
            n = max(n, tokens_per_image + 1) if start == 0 else n
            end = min(seq_len, start + n)
            pos[r, start:end] = np.arange(end - start)
            start = end
    labels = np.where(ids == image_token, -100, ids)
    labels[pos == 0] = -100
    return {
        "input_ids": torch.from_numpy(ids),
        "position_ids": torch.from_numpy(pos),
        "labels": torch.from_numpy(labels),
        "pixel_values": torch.from_numpy(
            rng.integers(0, 256, size=(rows, image_size, image_size, 3), dtype=np.uint8)
        ),
        "image_counts": torch.ones(rows, dtype=torch.int64),
    }


# -------------------------------------------------------------------------------------------- model


def bench_model(shape: tuple[dict, dict, str], attn: str, dtype: torch.dtype):
    """The VLM of `shape` (configs), random init, ViT frozen and projector + LM training (VILA stage 2)."""
    from vilaray.model.build import (
        FRESH_FEATURE_LAYER,
        default_image_processor,
        fresh_projector,
        load_llm,
        load_tower,
    )
    from vilaray.model.freeze import apply_schedule
    from vilaray.model.spec import ComponentSchedule, ComponentSource, FreezeSchedule
    from vilaray.model.vlm import VisionLanguageModel

    vision, llm, projector = shape
    tower = load_tower(ComponentSource(config=vision), dtype, attn)
    lm = load_llm(ComponentSource(config=llm), dtype, attn)
    model = VisionLanguageModel(
        tower,
        fresh_projector(projector, tower.config.hidden_size, lm.config.hidden_size).to(dtype),
        lm,
        image_token_id=lm.config.vocab_size - 1,
        feature_layer=FRESH_FEATURE_LAYER,
        image_processor=default_image_processor(tower.config),
    )
    schedule = FreezeSchedule(
        projector=ComponentSchedule(mode="full"), language_model=ComponentSchedule(mode="full")
    )
    apply_schedule(model, schedule)
    return model, schedule


@dataclass(frozen=True)
class Workload:
    """Everything both sides need to rebuild the same model and batches (shipped to the Ray worker)."""

    shape: tuple[dict, dict, str]
    attn: str
    rows: int
    seq_len: int
    steps: int
    warmup: int
    lengths: list[int]
    peak_tflops: float
    seed: int

    def batches(self, model, packing: bool) -> list[dict]:
        return [
            make_batch(
                self.rows,
                self.seq_len,
                model.language_model.config.vocab_size,
                model.image_token_id,
                model.tokens_per_image,
                model.image_size,
                self.lengths if packing else None,
                self.seed + i,
            )
            for i in range(2)
        ]


@dataclass
class Measured:
    """One variant x packing: median step time over the timed steps and what it works out to."""

    variant: str
    packing: bool
    step_s: float
    tokens_per_s: float
    tflops: float
    mfu: float
    final_loss: float
    peak_mem_gb: float | None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_inputs(batch: dict, device: torch.device) -> dict:
    keys = ("input_ids", "position_ids", "pixel_values", "image_counts")
    return {k: batch[k].to(device, non_blocking=True) for k in keys}


def time_steps(
    name: str,
    packing: bool,
    work: Workload,
    model,
    batches: list[dict],
    step: Callable[[dict], float],
    device: torch.device,
) -> Measured:
    """Run warmup + timed steps of `step` (which returns the loss) cycling over `batches`."""
    flop_model = FlopModel.of(model)
    tokens = batches[0]["input_ids"].numel()
    flops = statistics.mean(flop_model.batch_flops(b) for b in batches)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = [], float("nan")
    for i in range(work.warmup + work.steps):
        sync(device)
        t0 = time.perf_counter()
        loss = step(batches[i % len(batches)])
        sync(device)
        if i >= work.warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    tflops = flops / step_s / 1e12
    return Measured(name, packing, step_s, tokens / step_s, tflops, tflops / work.peak_tflops, loss, peak)


def announce(bench: str, measured: list[Measured], t0: float) -> None:
    """A console line per variant as it is measured: a long run (a 0.5B model on a GPU builds for minutes)
    shows where it is, and a run cut short shows what it had."""
    for m in measured:
        print(f"[{bench}] {m.variant}, packing {'on' if m.packing else 'off'}: {m.step_s:.4f} s/step, "
              f"{m.tokens_per_s:,.0f} tokens/s ({time.perf_counter() - t0:.0f} s into the run)", flush=True)  # fmt: skip


def bench_loss_sum(out, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The training loss's token sum (vilaray.train.loss) and how many tokens carry loss."""
    from vilaray.train.loss import token_loss_sums

    loss_sum, _ = token_loss_sums(out.token_losses, labels, ["bench"] * labels.shape[0])
    return loss_sum, int((labels[:, 1:] != -100).sum())


def choice(flag: str, text: str, allowed: dict):
    try:
        return allowed[text.strip()]
    except KeyError:
        raise ValueError(f"--{flag}: {text!r} is not one of {list(allowed)}") from None
