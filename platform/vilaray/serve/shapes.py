"""Chat requests about the shapes world's held-out VQA images, in OpenAI's format: the demo's served question
and the serve benchmark's prompts."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

from vilaray.evals.tasks import sentence_question
from vilaray.synth.chats import SHORT_ANSWER


@dataclass(frozen=True)
class ShapesQuestion:
    question: str
    image: Path
    messages: list[dict]  # one user turn: the image as a data URL, then the question


def shapes_questions(world: str | Path, n: int, short_answer: bool = False) -> list[ShapesQuestion]:
    """The first `n` held-out VQA questions (repeated when the split is smaller), each with its image; with
    `short_answer`, phrased as the SFT data and the eval suite ask them ("Is there a red star?" and
    LLaVA-1.5's short-answer suffix), to which the model answers in a word rather than describing the image."""
    root = Path(world) / "eval" / "vqa"
    questions = json.loads((root / "questions.json").read_text())["questions"]
    # shapes_val_000000000001.png -> image id 1
    images = {int(p.stem.rsplit("_", 1)[1]): p for p in (root / "images").iterdir()}
    out = []
    for i in range(n):
        q = questions[i % len(questions)]
        image = images[q["image_id"]]
        url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        text = f"{sentence_question(q['question'])}\n{SHORT_ANSWER}" if short_answer else q["question"]
        parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
        out.append(ShapesQuestion(text, image, [{"role": "user", "content": parts}]))
    return out
