"""k-shot prompts: seeded demonstrations from the support split, never the query, laid out as interleaved turns."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from vilaray.evals.tasks import EvalSample, TaskSpec


class ShotLeak(RuntimeError):
    """A demonstration has the query's content (same image bytes and text): it would give the answer away."""


@dataclass(frozen=True)
class PromptItem:
    """One model call: chat messages with image placeholders in order, the image files, and (multiple
    choice) the continuations to score. Plain JSON-able fields, so it travels through Ray Data."""

    uid: str
    task: str
    shots: int
    messages: str  # JSON of chat messages (content parts: {"type": "image"} / {"type": "text"})
    images: list[str]
    choices: list[str]
    max_new_tokens: int


def draw_shots(support: list[EvalSample], query: EvalSample, k: int, seed: int) -> list[EvalSample]:
    """k demonstrations drawn with a per-query seed (reproducible, independent of evaluation order),
    excluding anything whose content equals the query's, as OpenFlamingo draws them from the train split."""
    if k == 0:
        return []
    rng = random.Random(f"{seed}:{query.uid}:{k}")
    key = query.content_key
    pool = [s for s in support if s.content_key != key]
    if len(pool) < k:
        raise ValueError(f"support split has {len(pool)} usable demonstrations, fewer than {k} shots")
    return rng.sample(pool, k)


def user_turn(task: TaskSpec, sample: EvalSample) -> dict:
    text = task.prompt.query.format(**sample.fields)
    parts = ([{"type": "image"}] if sample.image else []) + [{"type": "text", "text": text}]
    return {"role": "user", "content": parts}


def build_prompt(task: TaskSpec, query: EvalSample, shots: list[EvalSample]) -> PromptItem:
    """Each demonstration is a user turn (its image, its question) and the assistant's reply; the query is
    the last user turn, left open for the model."""
    if any(s.content_key == query.content_key for s in shots):
        raise ShotLeak(f"task {task.name}: sample {query.uid} appears among its own demonstrations")
    messages = []
    for s in shots:
        reply = task.prompt.answer.format(answer=s.answer, **s.fields)
        messages += [user_turn(task, s), {"role": "assistant", "content": [{"type": "text", "text": reply}]}]
    messages.append(user_turn(task, query))
    images = [s.image for s in [*shots, query] if s.image]
    return PromptItem(
        query.uid, task.name, len(shots), json.dumps(messages), images, query.choices, task.max_new_tokens
    )
