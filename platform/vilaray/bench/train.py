"""Training benchmark: Ray Train + DeepSpeed ZeRO-2/3 against plain PyTorch loops on the same model and batches."""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vilaray.bench import Benchmark, register
from vilaray.bench.steps import (
    SHAPES,
    Measured,
    Workload,
    announce,
    bench_loss_sum,
    bench_model,
    choice,
    device_inputs,
    time_steps,
    world_doc_lengths,
)
from vilaray.train.flops import FORMULA, H100_BF16_TFLOPS


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
            loss_sum, n = bench_loss_sum(model(**device_inputs(batch, device), labels=labels), labels)
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
        loss_sum, n = bench_loss_sum(strategy.forward(**device_inputs(batch, device), labels=labels), labels)
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


def run_train_benchmark(cfg: TrainBenchConfig) -> TrainBenchReport:
    shape = SHAPES.get(cfg.shape)
    packing = [choice("packing", p, {"on": True, "off": False}) for p in cfg.packing.split(",")]
    stages = [choice("zero-stages", s, {str(z): z for z in (1, 2, 3)}) for s in cfg.zero_stages.split(",")]
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
    results, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vilaray-bench-train-") as tmp:
        for stage in stages:
            results += run_deepspeed(work, stage, packing, Path(tmp))
            announce("train", results[-len(packing) :], t0)
    for pure in (False, True):
        results += run_plain(work, packing, pure_bf16=pure, device=device)
        announce("train", results[-len(packing) :], t0)
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
