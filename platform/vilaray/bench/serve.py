"""Serve benchmark, in one run on the same prompts: the endpoint's overhead (one-token replies through Ray Serve
and the `openai` client against the same code in this process) and dynamic batching (time to first token and
tokens/s at several concurrencies, batching on against off)."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from vilaray.bench import Benchmark, register

ON, OFF = "batching on", "batching off"


@dataclass(frozen=True)
class ServeBenchConfig:
    """Options of `jobs/benchmark.py serve`; every field is a `--flag` of the same name."""

    model: str = field(
        default="", metadata={"help": "export to serve (default: the tiny VLM, built if missing)"}
    )
    root: str = field(default="artifacts/bench", metadata={"help": "cache of the world and tiny assets"})
    latency_requests: int = field(
        default=40, metadata={"help": "one-token requests per side for the overhead"}
    )
    requests: int = field(default=32, metadata={"help": "requests per concurrency level and side"})
    concurrency: str = field(default="1,4,8,16", metadata={"help": "client concurrencies to sweep"})
    max_tokens: int = field(default=32, metadata={"help": "tokens per reply in the sweep"})
    max_batch_size: int = field(default=8, metadata={"help": "the batching side's max_batch_size"})
    replica_cpus: float = field(default=0.5, metadata={"help": "CPUs each model replica claims (two run)"})
    replica_gpus: float = field(
        default=0.0, metadata={"help": "GPUs each model replica claims (two run: 0.5 shares one GPU)"}
    )
    max_overhead_ms: float = field(default=10.0, metadata={"help": "goal: Serve's p50 overhead at most this"})
    min_scaling: float = field(
        default=2.5, metadata={"help": "goal: batched tokens/s at concurrency 8 over concurrency 1"}
    )


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    n: int

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        ms = sorted(s * 1000 for s in seconds)
        return cls(statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))], len(ms))


@dataclass
class Level:
    """One concurrency level of one side: time to first token and throughput over all its requests."""

    side: str
    concurrency: int
    ttft: Latency
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ServeBenchReport:
    config: dict
    in_process: Latency
    served: Latency
    levels: list[Level]
    failures: list[str] = field(default_factory=list)

    @property
    def overhead_ms(self) -> float:
        return self.served.p50_ms - self.in_process.p50_ms

    def level(self, side: str, concurrency: int) -> Level:
        return next(x for x in self.levels if x.side == side and x.concurrency == concurrency)

    def scaling(self, side: str, concurrency: int) -> float:
        """tokens/s at `concurrency` over tokens/s at concurrency 1, on one side."""
        base = self.level(side, 1).tokens_per_s
        return self.level(side, concurrency).tokens_per_s / base if base else float("inf")

    def batching_gain(self, concurrency: int) -> float:
        off = self.level(OFF, concurrency).tokens_per_s
        return self.level(ON, concurrency).tokens_per_s / off if off else float("inf")

    def to_dict(self) -> dict:
        levels = [asdict(x) | {"tokens_per_s": x.tokens_per_s} for x in self.levels]
        concurrencies = sorted({x.concurrency for x in self.levels})
        return {
            "config": self.config,
            "in_process": asdict(self.in_process),
            "served": asdict(self.served),
            "overhead_ms": self.overhead_ms,
            "levels": levels,
            "scaling": {side: {c: self.scaling(side, c) for c in concurrencies} for side in (ON, OFF)},
            "batching_gain": {c: self.batching_gain(c) for c in concurrencies},
            "failures": self.failures,
            "passed": not self.failures,
        }

    def table(self) -> str:
        lines = [
            f"serve benchmark: cpus {os.cpu_count()}; one-token replies, p50 / p99",
            f"in process          {self.in_process.p50_ms:8.1f} / {self.in_process.p99_ms:8.1f} ms",
            f"through Serve       {self.served.p50_ms:8.1f} / {self.served.p99_ms:8.1f} ms",
            f"Serve's overhead at p50: {self.overhead_ms:.1f} ms",
            "side           conc  ttft p50 ms  ttft p99 ms   tokens/s  vs conc 1",
        ]
        for x in self.levels:
            lines.append(
                f"{x.side:14s} {x.concurrency:4d} {x.ttft.p50_ms:12.1f} {x.ttft.p99_ms:12.1f} "
                f"{x.tokens_per_s:10.1f} {self.scaling(x.side, x.concurrency):9.2f}x"
            )
        gains = ", ".join(
            f"{c}: {self.batching_gain(c):.2f}x" for c in sorted({x.concurrency for x in self.levels})
        )
        lines.append(f"batching on / off tokens/s by concurrency: {gains}")
        lines += [f"FAILED: {f}" for f in self.failures]
        return "\n".join(lines)


def check(cfg: ServeBenchConfig, report: ServeBenchReport) -> list[str]:
    """The issue's goals: Serve adds at most `max_overhead_ms` at p50, and batching turns 8 concurrent
    clients into at least `min_scaling` x the tokens/s of one."""
    failures = []
    if report.overhead_ms > cfg.max_overhead_ms:
        failures.append(f"Serve's p50 overhead {report.overhead_ms:.1f} ms, over {cfg.max_overhead_ms} ms")
    if any(x.concurrency == 8 for x in report.levels) and report.scaling(ON, 8) < cfg.min_scaling:
        failures.append(f"batched tokens/s at concurrency 8 is {report.scaling(ON, 8):.2f}x concurrency 1, "
                        f"below {cfg.min_scaling}x")  # fmt: skip
    return failures


def vqa_messages(world: str, n: int) -> list[list[dict]]:
    from vilaray.serve.shapes import shapes_questions

    return [q.messages for q in shapes_questions(world, n)]


def in_process_latency(model_dir: str, requests: list[list[dict]]) -> Latency:
    """One-token replies through the replica's own steps (parse, render, process, the batcher) without
    Serve or HTTP."""
    from vilaray.evals.generate import EvalModel, SamplingParams
    from vilaray.serve.batching import Batcher
    from vilaray.serve.config import Limits
    from vilaray.serve.images import template_request

    model, limits = EvalModel(model_dir), Limits()

    async def one(batcher: Batcher, raw: list[dict]) -> float:
        t0 = time.perf_counter()
        inputs = model.chat_inputs(*template_request(raw, limits))
        async for _ in batcher.stream(inputs, SamplingParams(1)):
            pass
        return time.perf_counter() - t0

    async def all_of() -> list[float]:
        batcher = Batcher(model, max_batch_size=1)
        await one(batcher, requests[0])  # warm-up
        return [await one(batcher, raw) for raw in requests]

    return Latency.of(asyncio.run(all_of()))


def served_latency(client, requests: list[list[dict]]) -> Latency:
    def one(raw: list[dict]) -> float:
        t0 = time.perf_counter()
        client.chat.completions.create(model="bench", messages=raw, max_tokens=1, temperature=0)
        return time.perf_counter() - t0

    one(requests[0])
    return Latency.of([one(raw) for raw in requests])


def sweep_level(client, side: str, requests: list[list[dict]], concurrency: int, max_tokens: int) -> Level:
    """`requests` streamed replies from `concurrency` client threads; tokens from each reply's usage."""

    def one(raw: list[dict]) -> tuple[float, int]:
        t0, first = time.perf_counter(), None
        stream = client.chat.completions.create(
            model="bench", messages=raw, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        tokens = 0
        for chunk in stream:
            if (
                first is None
                and chunk.choices
                and (chunk.choices[0].delta.content or chunk.choices[0].finish_reason)
            ):
                first = time.perf_counter() - t0
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return first if first is not None else time.perf_counter() - t0, tokens

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, requests))
    seconds = time.perf_counter() - t0
    return Level(side, concurrency, Latency.of([r[0] for r in results]), sum(r[1] for r in results), seconds)


def require_room(cfg: ServeBenchConfig, model: str) -> None:
    """Both sides' replicas (model + ingress) must fit at once, or `serve.run` would wait for them forever:
    refused before anything is measured."""
    import ray

    from vilaray.serve.config import ServeConfig

    free = ray.available_resources()
    ingress_cpus = ServeConfig(model=model).ingress_cpus
    need, have = 2 * (cfg.replica_cpus + ingress_cpus), free.get("CPU", 0.0)
    if need > have:
        raise ValueError(f"--replica-cpus {cfg.replica_cpus:g}: two sides need {need:g} CPUs, the cluster has "
                         f"{have:g} free (lower --replica-cpus or raise --ray-cpus)")  # fmt: skip
    if 2 * cfg.replica_gpus > free.get("GPU", 0.0):
        raise ValueError(f"--replica-gpus {cfg.replica_gpus:g}: two sides need {2 * cfg.replica_gpus:g} GPUs, the "
                         f"cluster has {free.get('GPU', 0.0):g} free")  # fmt: skip


def run_serve_benchmark(cfg: ServeBenchConfig) -> ServeBenchReport:
    import openai
    from ray import serve

    from vilaray.bench.evals import tiny_model_and_world
    from vilaray.serve.app import build_app
    from vilaray.serve.local import free_port, serve_running

    concurrencies = sorted({int(c) for c in cfg.concurrency.split(",")} | {1})
    model, world = tiny_model_and_world(cfg.root)
    model = cfg.model or model
    latency_prompts = vqa_messages(world, cfg.latency_requests)
    sweep_prompts = vqa_messages(world, cfg.requests)
    require_room(cfg, model)
    in_process = in_process_latency(model, latency_prompts)

    port = free_port()
    started_here = not serve_running()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # One replica each, fixed: the sides differ in batching only. Queues long enough that no request of
    # the sweep is turned away.
    common = {"model": model, "model_name": "bench", "num_cpus": cfg.replica_cpus, "num_gpus": cfg.replica_gpus,
              "max_waiting": 2 * max(concurrencies), "limits": {"max_tokens": max(cfg.max_tokens, 1)},
              "autoscaling": {"min_replicas": 1, "max_replicas": 1}}  # fmt: skip
    sides = {ON: cfg.max_batch_size, OFF: 1}
    apps = {side: f"bench-{i}" for i, side in enumerate(sides)}
    try:
        for side, size in sides.items():
            serve.run(
                build_app({**common, "max_batch_size": size}), name=apps[side], route_prefix=f"/{apps[side]}"
            )
        clients = {side: openai.OpenAI(base_url=f"http://127.0.0.1:{port}/{app}/v1", api_key="x", max_retries=0,
                                       timeout=600) for side, app in apps.items()}  # fmt: skip
        for client in clients.values():  # each replica's first request pays its warm-up, not the sweep
            client.chat.completions.create(
                model="bench", messages=sweep_prompts[0], max_tokens=2, temperature=0
            )
        served = served_latency(clients[OFF], latency_prompts)
        levels = [
            sweep_level(clients[side], side, sweep_prompts, c, cfg.max_tokens)
            for c in concurrencies
            for side in sides
        ]
    finally:
        for app in apps.values():
            serve.delete(app)
        if started_here:
            serve.shutdown()
    report = ServeBenchReport(asdict(cfg), in_process, served, levels)
    report.failures = check(cfg, report)
    return report


register(
    Benchmark(
        name="serve",
        summary="Ray Serve's overhead against in-process generation, and dynamic batching on vs off by concurrency",
        config=ServeBenchConfig,
        run=run_serve_benchmark,
        default_out="artifacts/bench/serve.json",
    )
)
