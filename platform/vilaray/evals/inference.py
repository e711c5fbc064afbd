"""Batch inference over Ray Data (model actors, on GPUs when present), and the one-process loop it replaces."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from vilaray.evals.prompts import PromptItem


def _items_from_batch(batch) -> list[PromptItem]:
    rows = batch.to_pylist()
    return [PromptItem(**{f.name: r[f.name] for f in dataclasses.fields(PromptItem)}) for r in rows]


class InferenceActor:
    """Ray Data actor: loads the export once, then answers batches of prompt items."""

    def __init__(self, model_dir: str):
        from vilaray.evals.generate import EvalModel

        self.model = EvalModel(model_dir)

    def __call__(self, batch):
        import pyarrow as pa

        items = _items_from_batch(batch)
        preds = self.model.run(items)
        return pa.table(
            {
                "uid": [i.uid for i in items],
                "task": [i.task for i in items],
                "shots": [i.shots for i in items],
                "prediction": [p["prediction"] for p in preds],
                "logliks": [json.dumps(p["logliks"]) for p in preds],
            }
        )


def _key(row: dict) -> tuple[str, int, str]:
    return row["task"], int(row["shots"]), row["uid"]


def infer_ray(model_dir: str | Path, items: list[PromptItem], batch_size: int = 16, actors: int = 1) -> dict:
    """Predictions keyed by (task, shots, uid). Items of one task and shot count sit together, so a
    batch's prompts share their image count and pad little."""
    import ray
    import torch

    ds = ray.data.from_items([dataclasses.asdict(i) for i in items], override_num_blocks=max(1, actors))
    gpus = 1 if torch.cuda.is_available() else 0
    out = ds.map_batches(
        InferenceActor,
        fn_constructor_args=(str(model_dir),),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=1,
    )
    return {_key(r): r for r in out.take_all()}


def infer_local(model_dir: str | Path, items: list[PromptItem], batch_size: int = 1) -> dict:
    """The same predictions from one process, `batch_size` items per call (1: one at a time)."""
    from vilaray.evals.generate import EvalModel

    model = EvalModel(model_dir)
    out = {}
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        for item, pred in zip(chunk, model.run(chunk)):
            row = {"uid": item.uid, "task": item.task, "shots": item.shots, **pred}
            row["logliks"] = json.dumps(row["logliks"])
            out[_key(row)] = row
    return out
