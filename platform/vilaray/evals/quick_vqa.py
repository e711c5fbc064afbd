"""Quick held-out VQA check of an export against the majority-answer baseline (the demo's smoke test).

Deliberately minimal: a simplified answer normalisation (lower case, punctuation, articles, number words)
and the plain VQA score `min(#annotators agreeing / 3, 1)`, not the official normalisation tables nor
the average over 10-choose-9 annotator subsets. The full evaluation harness (official VQA metric,
0/k-shot prompts, batch inference on Ray Data) comes with a later issue; this only answers "did the
three stages teach the model to look at the picture?" on questions it never trained on.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# LLaVA-1.5's suffix for short-answer questions; the SFT mix phrases VQA turns exactly this way
# (vilaray.synth.chats.SHORT_ANSWER), so the model answers in a word instead of a sentence.
SHORT_ANSWER = "Answer the question using a single word or phrase."
END_OF_TURN = "<|im_end|>"
ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
# A period is punctuation unless it sits between digits ("1.5" stays a number).
_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_PUNCT = re.compile(r"[^\w\s.]")


@dataclass(frozen=True)
class VQAQuestion:
    question_id: int
    question: str
    image: Path
    answers: tuple[str, ...]  # the annotators' raw answers (10 in VQA v2 and the shapes world)
    majority: str  # multiple_choice_answer


@dataclass(frozen=True)
class VQAResult:
    accuracy: float
    baseline: float
    n: int
    majority_answer: str


def normalize_answer(text: str) -> str:
    """Lower case, apostrophes dropped ("don't" = "dont"), other punctuation and articles removed,
    number words as digits, single spaces."""
    text = _PUNCT.sub(lambda m: "" if m.group() == "'" else " ", text.lower())
    text = _PERIOD.sub(" ", text)
    return " ".join(NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES)


def vqa_score(prediction: str, answers: list[str] | tuple[str, ...]) -> float:
    """VQA accuracy of one prediction: 3 of the annotators agreeing is a full point, 1 or 2 partial."""
    pred = normalize_answer(prediction)
    agreeing = sum(normalize_answer(a) == pred for a in answers)
    return min(agreeing / 3.0, 1.0)


def load_split(split_dir: str | Path) -> list[VQAQuestion]:
    """A VQA-format split: questions.json + annotations.json + images/shapes_<subtype>_<id:012d>.png."""
    split_dir = Path(split_dir)
    questions = json.loads((split_dir / "questions.json").read_text())
    annotations = json.loads((split_dir / "annotations.json").read_text())
    by_id = {a["question_id"]: a for a in annotations["annotations"]}
    prefix = f"{questions['data_type']}_{questions['data_subtype']}"
    out = []
    for q in questions["questions"]:
        ann = by_id[q["question_id"]]
        image = split_dir / "images" / f"{prefix}_{q['image_id']:012d}.png"
        answers = tuple(a["answer"] for a in ann["answers"])
        out.append(
            VQAQuestion(q["question_id"], q["question"], image, answers, ann["multiple_choice_answer"])
        )
    return out


def majority_answer(split_dir: str | Path) -> str:
    """The most frequent `multiple_choice_answer` of a split (ties: the first seen), the blind guess."""
    annotations = json.loads((Path(split_dir) / "annotations.json").read_text())["annotations"]
    return Counter(a["multiple_choice_answer"] for a in annotations).most_common(1)[0][0]


def sample_questions(questions: list[VQAQuestion], n: int, seed: int) -> list[VQAQuestion]:
    return random.Random(seed).sample(questions, min(n, len(questions)))


def user_text(question: str) -> str:
    """The question as the SFT data phrases it: capitalised, closed by '?', then LLaVA's suffix. The
    leading newline matches `<image>\\n` in LLaVA-format training turns."""
    q = question.strip()
    q = q[0].upper() + q[1:] + ("" if q[-1] in ".?!" else "?")
    return f"\n{q}\n{SHORT_ANSWER}"


def build_prompt(processor, question: str) -> str:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text(question)}]}
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def first_answer(text: str) -> str:
    """The reply up to the end of its turn and its first line (a chatty model may go on)."""
    return text.split(END_OF_TURN, 1)[0].strip().split("\n", 1)[0]


def generate_answers(model, processor, questions: list[VQAQuestion], batch_size: int, max_new_tokens: int):
    """Greedy answers, batched with left padding so every prompt ends where generation starts."""
    import torch
    from PIL import Image

    tok = processor.tokenizer
    tok.padding_side = "left"
    stop = tok.convert_tokens_to_ids(END_OF_TURN)
    answers = []
    for start in range(0, len(questions), batch_size):
        batch = questions[start : start + batch_size]
        images = [Image.open(q.image).convert("RGB") for q in batch]
        prompts = [build_prompt(processor, q.question) for q in batch]
        # The template already spells every token the model trained on; no extra BOS/EOS.
        inputs = processor(
            text=prompts, images=images, padding=True, return_tensors="pt", add_special_tokens=False
        )
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        answers += [first_answer(t) for t in tok.batch_decode(new, skip_special_tokens=False)]
    return answers


def evaluate_vqa(
    export_dir: str | Path,
    world_root: str | Path,
    n: int = 200,
    seed: int = 0,
    batch_size: int = 16,
    max_new_tokens: int = 5,
) -> VQAResult:
    """Accuracy of `export_dir` on `n` seeded held-out questions (eval/vqa) and, on the same questions,
    of always answering the support split's (eval/vqa_train) majority answer."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    world_root = Path(world_root)
    questions = sample_questions(load_split(world_root / "eval" / "vqa"), n, seed)
    majority = majority_answer(world_root / "eval" / "vqa_train")
    model = AutoModelForImageTextToText.from_pretrained(str(export_dir)).eval()
    processor = AutoProcessor.from_pretrained(str(export_dir))
    predictions = generate_answers(model, processor, questions, batch_size, max_new_tokens)
    return score(predictions, questions, majority)


def score(predictions: list[str], questions: list[VQAQuestion], majority: str) -> VQAResult:
    n = len(questions)
    accuracy = sum(vqa_score(p, q.answers) for p, q in zip(predictions, questions)) / max(n, 1)
    baseline = sum(vqa_score(majority, q.answers) for q in questions) / max(n, 1)
    return VQAResult(accuracy, baseline, n, majority)


def format_result(result: VQAResult) -> str:
    return (
        f"held-out VQA accuracy {result.accuracy:.3f} vs majority-answer baseline {result.baseline:.3f} "
        f"(always {result.majority_answer!r}; {result.n} questions)"
    )


def print_result(result: VQAResult) -> None:
    print(format_result(result))
