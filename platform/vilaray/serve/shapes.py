"""Chat requests about the shapes world's held-out VQA images, in OpenAI's format: the demo's served question
and the serve benchmark's prompts."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ShapesQuestion:
    question: str
    image: Path
    messages: list[dict]  # one user turn: the image as a data URL, then the question


def shapes_questions(world: str | Path, n: int) -> list[ShapesQuestion]:
    """The first `n` held-out VQA questions (repeated when the split is smaller), each with its image."""
    root = Path(world) / "eval" / "vqa"
    questions = json.loads((root / "questions.json").read_text())["questions"]
    # shapes_val_000000000001.png -> image id 1
    images = {int(p.stem.rsplit("_", 1)[1]): p for p in (root / "images").iterdir()}
    out = []
    for i in range(n):
        q = questions[i % len(questions)]
        image = images[q["image_id"]]
        url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": q["question"]}]
        out.append(ShapesQuestion(q["question"], image, [{"role": "user", "content": parts}]))
    return out
