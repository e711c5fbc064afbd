"""Training benchmark: Ray Train + DeepSpeed ZeRO-2/3 against plain PyTorch loops on the same model and batches."""

from __future__ import annotations

import gc
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vilaray.bench import Benchmark, register
from vilaray.registry import Registry
from vilaray.train.flops import FORMULA, H100_BF16_TFLOPS, FlopModel

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


@dataclass(frozen=True)
class TrainBenchConfig:
    """Options of `jobs/benchmark.py train`; every field is a `--flag` of the same name."""

    shape: str = field(default="qwen2-0.5b-siglip", metadata={"help": f"model shape: {', '.join(SHAPES)}"})
    rows: int = field(default=8, metadata={"help": "rows per step (one image each)"})
    seq_len: int = field(default=2048, metadata={"help": "tokens per row"})
    steps: int = field(default=20, metadata={"help": "timed steps per variant"})
    warmup: int = field(
        default=5, metadata={"help": "untimed steps first (allocator, kernels, DeepSpeed buckets)"}
    )
    zero_stages: str = field(
        default="2,3", metadata={"help": "DeepSpeed ZeRO stages to run, comma-separated"}
    )
    packing: str = field(
        default="on,off", metadata={"help": "on: shapes-world documents packed per row; off: one"}
    )
    attn: str = field(
        default="sdpa", metadata={"help": "attention implementation (sdpa, flex_attention, eager)"}
    )
    peak_tflops: float = field(default=H100_BF16_TFLOPS, metadata={"help": "MFU denominator"})
    floor: float = field(
        default=0.9, metadata={"help": "ZeRO-2 / same-precision plain loop floor (GPU only)"}
    )
    lengths_root: str = field(
        default="artifacts/bench", metadata={"help": "cache of the world the lengths come from"}
    )
    seed: int = 0


# ------------------------------------------------------------------------------------------ batches


def world_doc_lengths(root: str, seed: int) -> list[int]:
    """Text-token lengths of the shapes world's documents, captions and text samples, by the tiny
    tokenizer: the length mix packed rows are built from."""
    from vilaray.config import recipe_from_dict
    from vilaray.data.pipeline import PipelineSpec, SourceEncoder, plan_source
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
    source = SourceEncoder.local(PipelineSpec.from_recipe(recipe))
    per_image = source.spec.geometry.tokens_per_image
    lengths = []
    for name, src in recipe.data.sources.items():
        for shard in plan_source(name, src, recipe.data):
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _device_inputs(batch: dict, device: torch.device) -> dict:
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
        _sync(device)
        t0 = time.perf_counter()
        loss = step(batches[i % len(batches)])
        _sync(device)
        if i >= work.warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    tflops = flops / step_s / 1e12
    return Measured(name, packing, step_s, tokens / step_s, tflops, tflops / work.peak_tflops, loss, peak)


def _loss_sum(out, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The training loss's token sum (vilaray.train.loss) and how many tokens carry loss."""
    from vilaray.train.loss import token_loss_sums

    loss_sum, _ = token_loss_sums(out.token_losses, labels, ["bench"] * labels.shape[0])
    return loss_sum, int((labels[:, 1:] != -100).sum())


def run_plain(
    work: Workload, packing_modes: list[bool], pure_bf16: bool, device: torch.device
) -> list[Measured]:
    """A plain PyTorch loop. Mixed: fp32 weights + bf16 autocast + fused AdamW on fp32 (on CPU: fp32, what
    the DeepSpeed side runs there). Pure bf16: bf16 weights and optimizer state."""
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if pure_bf16 else torch.float32
    torch.manual_seed(work.seed)
    model, _ = bench_model(work.shape, work.attn, dtype)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=on_gpu)
    autocast = on_gpu and not pure_bf16
    name = "plain pure-bf16" if pure_bf16 else ("plain bf16-mixed" if on_gpu else "plain fp32")

    def step(batch: dict) -> float:
        labels = batch["labels"].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss_sum, n = _loss_sum(model(**_device_inputs(batch, device), labels=labels), labels)
            loss = loss_sum / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    out = [time_steps(name, p, work, model, work.batches(model, p), step, device) for p in packing_modes]
    return out


def release_memory(device: torch.device) -> None:
    """Hand the plain loop's GPU memory back before the next variant (the driver keeps its CUDA context)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def deepspeed_worker(config: dict) -> None:
    """Ray Train worker: the training path's DeepSpeed strategy on the benchmark's model and batches."""
    import ray.train
    import ray.train.torch

    from vilaray.model.freeze import param_groups
    from vilaray.train.loss import step_scale
    from vilaray.train.spec import TrainConfig
    from vilaray.train.strategy import make_strategy

    work = Workload(**config["work"])
    device = ray.train.torch.get_device()
    world = ray.train.get_context().get_world_size()
    on_gpu = device.type == "cuda"
    cfg = TrainConfig(
        zero_stage=config["zero_stage"],
        precision="bf16" if on_gpu else "fp32",
        num_workers=world,
        micro_batch_size=work.rows,
        max_steps=10**6,
        warmup_steps=0,
        lr=1e-4,
        use_gpu=on_gpu,
    )
    torch.manual_seed(work.seed)
    model, schedule = bench_model(work.shape, work.attn, torch.float32)
    strategy = make_strategy(cfg, world, device)
    strategy.setup(model, param_groups(model, schedule, cfg.lr))

    def step(batch: dict) -> float:
        labels = batch["labels"].to(device)
        loss_sum, n = _loss_sum(strategy.forward(**_device_inputs(batch, device), labels=labels), labels)
        strategy.backward(loss_sum * step_scale(world, 1, n))
        strategy.step()
        return float(loss_sum.detach()) / n

    name = f"ray-train deepspeed zero{cfg.zero_stage}"
    results = [
        asdict(time_steps(name, p, work, strategy.module, work.batches(strategy.module, p), step, device))
        for p in config["packing"]
    ]
    if ray.train.get_context().get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps(results))


def run_deepspeed(
    work: Workload, zero_stage: int, packing_modes: list[bool], out_dir: Path
) -> list[Measured]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out = out_dir / f"zero{zero_stage}.json"
    use_gpu = torch.cuda.is_available()
    TorchTrainer(
        deepspeed_worker,
        train_loop_config={
            "work": asdict(work),
            "zero_stage": zero_stage,
            "packing": packing_modes,
            "out": str(out),
        },
        scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(out_dir / "ray"), name=f"bench-zero{zero_stage}"),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=600),
    ).fit()
    return [Measured(**m) for m in json.loads(out.read_text())]


# ------------------------------------------------------------------------------------------- report


@dataclass
class TrainBenchReport:
    config: dict
    machine: dict
    results: list[Measured]
    failures: list[str] = field(default_factory=list)

    def baseline(self, packing: bool, pure: bool) -> Measured | None:
        for m in self.results:
            if m.packing == packing and m.variant.startswith("plain") and ("pure" in m.variant) == pure:
                return m
        return None

    def ratios(self) -> list[dict]:
        rows = []
        for m in self.results:
            same, pure = self.baseline(m.packing, False), self.baseline(m.packing, True)
            rows.append(
                asdict(m)
                | {
                    "vs_plain_same_precision": same.step_s / m.step_s if same else None,
                    "vs_plain_pure_bf16": pure.step_s / m.step_s if pure else None,
                }
            )
        return rows

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "machine": self.machine,
            "results": self.ratios(),
            "formula": FORMULA,
            "failures": self.failures,
            "passed": not self.failures,
        }

    def table(self) -> str:
        head = f"{'variant':<28}{'packing':>8}{'step s':>10}{'tok/s':>11}{'TFLOP/s':>9}{'MFU':>8}{'vs same':>9}{'vs bf16':>9}"
        lines = [
            f"train benchmark: {self.config['shape']}, {self.config['rows']} x {self.config['seq_len']} tokens, "
            f"one image per row, ViT frozen; device {self.machine['device']}",
            head,
        ]
        for r in self.ratios():

            def ratio(x):
                return f"{x:>8.2f}x" if x is not None else f"{'-':>9}"

            lines.append(
                f"{r['variant']:<28}{'on' if r['packing'] else 'off':>8}{r['step_s']:>10.4f}{r['tokens_per_s']:>11.0f}"
                f"{r['tflops']:>9.3g}{r['mfu']:>7.1%} {ratio(r['vs_plain_same_precision'])}{ratio(r['vs_plain_pure_bf16'])}"
            )
        if self.machine["device"] == "cpu":
            lines.append(
                "CPU run: MFU is against the GPU peak and means nothing here; the floor is checked on GPU only."
            )
        lines.extend(f"FAILED: {f}" for f in self.failures)
        return "\n".join(lines)


def check(cfg: TrainBenchConfig, report: TrainBenchReport) -> list[str]:
    """The GPU verdict; on a CPU the step times of tiny shapes say nothing about DeepSpeed's overhead."""
    if report.machine["device"] == "cpu":
        return []
    return floor_failures(report.ratios(), cfg.floor)


def floor_failures(ratios: list[dict], floor: float) -> list[str]:
    """Each ZeRO-2 measurement below `floor` x the same-precision plain loop on the same rows."""
    return [
        f"ZeRO-2 (packing {'on' if r['packing'] else 'off'}) at {r['vs_plain_same_precision']:.2f}x the "
        f"same-precision plain loop, below the {floor}x floor"
        for r in ratios
        if r["variant"].endswith("zero2") and (r["vs_plain_same_precision"] or 0) < floor
    ]


def _choice(flag: str, text: str, allowed: dict):
    try:
        return allowed[text.strip()]
    except KeyError:
        raise ValueError(f"--{flag}: {text!r} is not one of {list(allowed)}") from None


def run_train_benchmark(cfg: TrainBenchConfig) -> TrainBenchReport:
    shape = SHAPES.get(cfg.shape)
    packing = [_choice("packing", p, {"on": True, "off": False}) for p in cfg.packing.split(",")]
    stages = [_choice("zero-stages", s, {str(z): z for z in (1, 2, 3)}) for s in cfg.zero_stages.split(",")]
    work = Workload(
        shape(),
        cfg.attn,
        cfg.rows,
        cfg.seq_len,
        cfg.steps,
        cfg.warmup,
        world_doc_lengths(cfg.lengths_root, cfg.seed),
        cfg.peak_tflops,
        cfg.seed,
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # DeepSpeed first: a freshly started local Ray spends a while starting worker processes, which would
    # slow whichever side ran first on a small machine; the plain loops then run on a settled one.
    results = []
    with tempfile.TemporaryDirectory(prefix="vilaray-bench-train-") as tmp:
        for stage in stages:
            results += run_deepspeed(work, stage, packing, Path(tmp))
    for pure in (False, True):
        results += run_plain(work, packing, pure_bf16=pure, device=device)
        release_memory(device)
    machine = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    report = TrainBenchReport(asdict(cfg), machine, results)
    report.failures = check(cfg, report)
    return report


register(
    Benchmark(
        name="train",
        summary="tokens/s and MFU of Ray Train + DeepSpeed ZeRO-2/3 vs plain PyTorch loops, same model and "
        "batches.\n" + FORMULA,
        config=TrainBenchConfig,
        run=run_train_benchmark,
        default_out="artifacts/bench/train.json",
    )
)
