"""The evaluation harness: a suite's tasks x shot counts for a model -> scores, baselines, standard errors."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from vilaray.evals.demonstrations import DEMONSTRATIONS
from vilaray.evals.prompts import PromptItem, build_prompt, draw_shots
from vilaray.evals.tasks import EvalSample, Suite, TaskSpec, load_split
from vilaray.registry import Registry


@dataclass
class TaskData:
    task: TaskSpec
    samples: list[EvalSample]
    support: list[EvalSample]
    skipped: int  # records without references or unreadable, counted and left out

    @cached_property
    def demonstrations(self) -> list[EvalSample]:
        """The support split as k-shot demonstrations show it (the task's `prompt.demonstration`); the blind
        baseline keeps guessing from the split as loaded."""
        return DEMONSTRATIONS.get(self.task.prompt.demonstration)(self.support)


@dataclass
class Score:
    value: float
    stderr: float
    n: int


@dataclass
class ModelResult:
    model: str
    scores: dict[str, Score] = field(default_factory=dict)  # "task/k-shot" -> score
    predictions: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ metrics


def _vqa(preds: dict[str, str], samples: dict[str, EvalSample]) -> dict[str, float]:
    from vilaray.evals.metrics import vqa_accuracy

    return {u: vqa_accuracy(p, samples[u].references) for u, p in preds.items()}


def _exact(preds: dict[str, str], samples: dict[str, EvalSample]) -> dict[str, float]:
    from vilaray.evals.metrics import exact_match

    return {u: exact_match(p, samples[u].references) for u, p in preds.items()}


def _mc(preds: dict[str, str], samples: dict[str, EvalSample]) -> dict[str, float]:
    return {u: float(p == samples[u].choices[samples[u].gold]) for u, p in preds.items()}


def _cider(preds: dict[str, str], samples: dict[str, EvalSample]) -> dict[str, float]:
    """Per-image CIDEr-D; their mean is the corpus score (document frequencies from these references)."""
    from vilaray.evals.metrics import cider_d_scores

    _, per_image = cider_d_scores(preds, {u: samples[u].references for u in preds})
    return per_image


# Per-sample scores; a task's score is their mean (CIDEr-D included: pycocoevalcap averages per image).
METRICS: Registry[Callable[[dict[str, str], dict[str, EvalSample]], dict[str, float]]] = Registry(
    "metric",
    {
        "vqa_accuracy": _vqa,
        "exact_match": _exact,
        "mc_accuracy": _mc,
        "cider_d": _cider,
    },
)


def bootstrap_stderr(values: list[float], seed: int, rounds: int = 1000) -> float:
    """Standard deviation of the mean over `rounds` resamples with replacement."""
    if len(values) < 2:
        return 0.0
    rng = random.Random(seed)
    n = len(values)
    means = [sum(rng.choices(values, k=n)) / n for _ in range(rounds)]
    mu = sum(means) / rounds
    return (sum((m - mu) ** 2 for m in means) / (rounds - 1)) ** 0.5


def score(metric: str, preds: dict[str, str], samples: list[EvalSample], seed: int) -> Score:
    by_uid = {s.uid: s for s in samples}
    per = METRICS.get(metric)(preds, by_uid)
    values = [per[u] for u in preds]
    return Score(sum(values) / max(1, len(values)), bootstrap_stderr(values, seed), len(values))


# ------------------------------------------------------------------------------------------ harness


def load_tasks(suite: Suite, base: Path, limit: int | None = None) -> list[TaskData]:
    out = []
    for task in suite.tasks:
        samples, skipped = load_split(task, "eval", base)
        support, _ = load_split(task, "support", base)
        n = min(x for x in (task.limit, limit, len(samples)) if x is not None)
        samples = random.Random(f"{suite.seed}:{task.name}").sample(samples, n)
        out.append(TaskData(task, samples, support, skipped))
    return out


def prompt_items(tasks: list[TaskData], shots: list[int], seed: int) -> list[PromptItem]:
    return [
        build_prompt(t.task, s, draw_shots(t.demonstrations, s, k, seed))
        for t in tasks
        for k in shots
        for s in t.samples
    ]


def shuffled_images(items: list[PromptItem], seed: int) -> list[PromptItem]:
    """The grounding control: every query's image swapped for another query image of the same task and shot
    count (demonstrations keep theirs). A model that reads its image loses accuracy here; one that answers
    from the question alone scores the same.

    The swap is a seeded derangement of the distinct images (VQA asks several questions per image), so no
    query keeps its own image and questions about one image all move to the same other image."""
    groups: dict[tuple[str, int], list[str]] = {}
    for it in items:
        if it.images and it.images[-1] not in groups.setdefault((it.task, it.shots), []):
            groups[(it.task, it.shots)].append(it.images[-1])
    swap: dict[tuple[str, int], dict[str, str]] = {}
    for (task, shots), images in groups.items():
        order = sorted(images)
        random.Random(f"{seed}:{task}:{shots}:shuffle").shuffle(order)
        swap[(task, shots)] = dict(zip(order, order[1:] + order[:1]))  # one shuffled cycle: no fixed point
    return [
        replace(it, images=[*it.images[:-1], swap[(it.task, it.shots)][it.images[-1]]]) if it.images else it
        for it in items
    ]


def blind_guess(t: TaskData) -> str:
    """What a model that never looks answers: the support split's most frequent answer / caption."""
    return Counter(s.answer for s in t.support).most_common(1)[0][0]


def score_predictions(
    name: str, tasks: list[TaskData], shots: list[int], preds: dict, seed: int
) -> ModelResult:
    result = ModelResult(name)
    for t in tasks:
        for k in shots:
            got = {s.uid: preds[(t.task.name, k, s.uid)]["prediction"] for s in t.samples}
            result.scores[f"{t.task.name}/{k}-shot"] = score(t.task.metric, got, t.samples, seed)
            result.predictions += [
                {"model": name, "task": t.task.name, "shots": k, "uid": u, "prediction": p}
                for u, p in got.items()
            ]
    return result


def baseline_result(tasks: list[TaskData], shots: list[int], seed: int) -> ModelResult:
    """The blind baselines as a row of the table (the same guess at every shot count)."""
    preds = {}
    for t in tasks:
        if t.task.kind == "multiple_choice":
            continue  # a constant string is not one of each item's choices; chance is 1/#choices
        guess = blind_guess(t)
        preds |= {(t.task.name, k, s.uid): {"prediction": guess} for k in shots for s in t.samples}
    kept = [t for t in tasks if t.task.kind != "multiple_choice"]
    result = score_predictions("baseline (blind)", kept, shots, preds, seed)
    for t in tasks:
        if t.task.kind == "multiple_choice":
            chance = sum(1 / len(s.choices) for s in t.samples) / max(1, len(t.samples))
            for k in shots:
                result.scores[f"{t.task.name}/{k}-shot"] = Score(chance, 0.0, len(t.samples))
    return result


def _infer(model_dir, items: list[PromptItem], backend: str, batch_size: int, actors: int) -> dict:
    from vilaray.evals.inference import infer_local, infer_ray

    if backend == "ray":
        return infer_ray(model_dir, items, batch_size=batch_size, actors=actors)
    return infer_local(model_dir, items, batch_size=batch_size)


def evaluate_model(
    model_dir: str | Path,
    tasks: list[TaskData],
    shots: list[int],
    seed: int,
    name: str | None = None,
    backend: str = "ray",
    batch_size: int = 16,
    actors: int = 1,
) -> ModelResult:
    """Scores of one export."""
    preds = _infer(model_dir, prompt_items(tasks, shots, seed), backend, batch_size, actors)
    return score_predictions(name or str(model_dir), tasks, shots, preds, seed)


# Marks the control's copy of a query (same task, shots and uid) inside one inference pass.
_CONTROL = "\x00shuffled"


def evaluate_with_control(
    model_dir: str | Path,
    tasks: list[TaskData],
    shots: list[int],
    seed: int,
    name: str,
    control_name: str,
    backend: str = "ray",
    batch_size: int = 16,
    actors: int = 1,
) -> tuple[ModelResult, ModelResult]:
    """Scores of one export and of its shuffled-image control (see shuffled_images), from one inference
    pass: the model is loaded once (on Ray, one actor pool) for both."""
    items = prompt_items(tasks, shots, seed)
    control = [replace(it, uid=it.uid + _CONTROL) for it in shuffled_images(items, seed)]
    preds = _infer(model_dir, items + control, backend, batch_size, actors)
    plain = {k: v for k, v in preds.items() if not k[2].endswith(_CONTROL)}
    swapped = {(t, k, u.removesuffix(_CONTROL)): v for (t, k, u), v in preds.items() if u.endswith(_CONTROL)}
    return (
        score_predictions(name, tasks, shots, plain, seed),
        score_predictions(control_name, tasks, shots, swapped, seed),
    )


def prompts_used(tasks: list[TaskData]) -> dict:
    return {t.task.name: json.loads(t.task.prompt.model_dump_json()) for t in tasks}
