"""Evaluation tasks declared as data: YAML suites -> typed task specs -> samples, one loader per task kind."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vilaray.registry import Registry


class TaskFileError(ValueError):
    """A malformed task file; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitSpec(Strict):
    """One split's files, relative to the suite's `root` (or absolute)."""

    questions: str | None = None  # vqa: VQA-format questions JSON
    annotations: str | None = None  # vqa: annotations JSON (10 answers each); caption: COCO captions JSON
    items: str | None = None  # multiple_choice: JSONL of {"question", "choices", "answer"}
    images: str | None = None  # image folder (vqa, caption)


class PromptSpec(Strict):
    """`query` is the user turn (fields in braces); `answer` is how a demonstration's reply reads;
    `demonstration` which caption reference a demonstration shows (vilaray.evals.demonstrations)."""

    query: str
    answer: str = "{answer}"
    demonstration: Literal["first", "consensus"] = "first"


class TaskSpec(Strict):
    name: str
    kind: Literal["vqa", "caption", "multiple_choice"]
    metric: Literal["vqa_accuracy", "cider_d", "exact_match", "mc_accuracy"]
    eval: SplitSpec
    support: SplitSpec  # where k-shot demonstrations (and the blind baseline) come from
    prompt: PromptSpec
    limit: int | None = Field(None, ge=1)  # samples of the eval split (seeded choice), None: all
    max_new_tokens: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _consensus_is_for_captions(self) -> TaskSpec:
        if self.prompt.demonstration == "consensus" and self.kind != "caption":
            raise ValueError(
                f"prompt.demonstration: 'consensus' picks among a caption's references; a {self.kind} task "
                "shows its majority answer or gold choice"
            )
        return self


class Suite(Strict):
    root: str = "."
    seed: int = 0
    shots: list[int] = [0, 4]
    tasks: list[TaskSpec] = Field(min_length=1)


def load_suite(path: str | Path, root: str | Path | None = None) -> tuple[Suite, Path]:
    """A suite file and the folder its data paths are relative to (`root` overrides the file's)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TaskFileError(f"{path}: cannot read task file: {e}") from None
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise TaskFileError(f"{path}: {where}: {err['msg']}") from None
    base = Path(root) if root is not None else (path.parent / suite.root)
    for task in suite.tasks:
        _check_files(path, task, base)
    return suite, base


REQUIRED: dict[str, tuple[str, ...]] = {
    "vqa": ("questions", "annotations", "images"),
    "caption": ("annotations", "images"),
    "multiple_choice": ("items",),
}


def _check_files(path: Path, task: TaskSpec, base: Path) -> None:
    for split in ("eval", "support"):
        spec = getattr(task, split)
        for name in REQUIRED[task.kind]:
            value = getattr(spec, name)
            if value is None:
                raise TaskFileError(
                    f"{path}: tasks.{task.name}.{split}.{name}: required for a {task.kind} task"
                )
            if not (base / value).exists():
                raise TaskFileError(
                    f"{path}: tasks.{task.name}.{split}.{name}: {base / value} does not exist"
                )


# ------------------------------------------------------------------------------------------ samples


@dataclass(frozen=True)
class EvalSample:
    """One question / image / item: prompt fields, the references it is scored against, and a content key
    (image bytes hash + text) that tells demonstrations apart from the query whatever their ids say."""

    uid: str
    fields: dict[str, str]
    references: list[str]
    answer: str  # what this sample shows as the reply when it is a demonstration
    image: str | None = None
    choices: list[str] = field(default_factory=list)
    gold: int | None = None

    @cached_property  # draw_shots compares every support sample with every query: hash each image once
    def content_key(self) -> tuple[str, str]:
        digest = hashlib.sha256(Path(self.image).read_bytes()).hexdigest() if self.image else ""
        return digest, json.dumps(self.fields, sort_keys=True)


def sentence_question(q: str) -> str:
    """'is there a red star' -> 'Is there a red star?' (the SFT data's phrasing)."""
    q = q.strip()
    return q[:1].upper() + q[1:] + ("" if q[-1:] in ".?!" else "?")


def image_ok(path: Path) -> bool:
    """The file exists and its header decodes (a missing or corrupt image is skipped and counted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except (OSError, UnidentifiedImageError, SyntaxError):
        return False


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TaskFileError(f"{path}: cannot read {what}: {e}") from None


def load_vqa(split: SplitSpec, base: Path) -> tuple[list[EvalSample], int]:
    """VQA v2 format. Questions without annotations are skipped and counted, never guessed."""
    questions = _read_json(base / split.questions, "questions")
    anns = {a["question_id"]: a for a in _read_json(base / split.annotations, "annotations")["annotations"]}
    prefix = f"{questions.get('data_type', '')}_{questions.get('data_subtype', '')}"
    samples, skipped = [], 0
    for q in questions["questions"]:
        ann = anns.get(q["question_id"])
        image = base / split.images / f"{prefix}_{q['image_id']:012d}.png"
        if ann is None or not ann.get("answers") or not image_ok(image):
            skipped += 1
            continue
        answers = [a["answer"] for a in ann["answers"]]
        fields = {"question": q["question"], "Question": sentence_question(q["question"])}
        majority = ann.get("multiple_choice_answer") or Counter(answers).most_common(1)[0][0]
        samples.append(EvalSample(str(q["question_id"]), fields, answers, majority, str(image)))
    return samples, skipped


def load_caption(split: SplitSpec, base: Path) -> tuple[list[EvalSample], int]:
    """COCO captions format (Karpathy-style: images + annotations with `caption`)."""
    data = _read_json(base / split.annotations, "captions")
    refs: dict[int, list[str]] = {}
    for a in data["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    samples, skipped = [], 0
    for img in data["images"]:
        image = str(base / split.images / img["file_name"])
        if not refs.get(img["id"]) or not image_ok(Path(image)):
            skipped += 1
            continue
        samples.append(EvalSample(str(img["id"]), {}, refs[img["id"]], refs[img["id"]][0], image))
    return samples, skipped


def load_multiple_choice(split: SplitSpec, base: Path) -> tuple[list[EvalSample], int]:
    """MMLU-style JSONL: {"question", "choices", "answer" (index)}."""
    samples, skipped = [], 0
    for i, line in enumerate((base / split.items).read_text().splitlines()):
        try:
            item = json.loads(line)
            choices, gold = [str(c) for c in item["choices"]], int(item["answer"])
            if not 0 <= gold < len(choices):
                raise ValueError("answer out of range")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            skipped += 1
            continue
        samples.append(
            EvalSample(
                str(i),
                {"question": item["question"]},
                [choices[gold]],
                choices[gold],
                choices=choices,
                gold=gold,
            )
        )
    return samples, skipped


LOADERS: Registry[Callable[[SplitSpec, Path], tuple[list[EvalSample], int]]] = Registry(
    "task kind",
    {
        "vqa": load_vqa,
        "caption": load_caption,
        "multiple_choice": load_multiple_choice,
    },
)


def load_split(task: TaskSpec, split: str, base: Path) -> tuple[list[EvalSample], int]:
    return LOADERS.get(task.kind)(getattr(task, split), base)
