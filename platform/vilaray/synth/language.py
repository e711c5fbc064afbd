"""Words for scenes: referring expressions, reference captions, and VQA questions with ten human answers."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vilaray.registry import Registry
from vilaray.synth.scenes import COLORS, KINDS, POSITIONS, SIZES, Scene, Shape

NUMBER_WORDS = ("zero", "one", "two", "three")
WHERE = {
    "top": "at the top",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom": "at the bottom",
}
# What a minority of annotators say instead of the canonical answer (same meaning, different string),
# so VQA's min(#matching humans / 3, 1) accuracy is not all-or-nothing.
VARIANTS: dict[str, tuple[str, ...]] = {
    "red": ("dark red", "crimson"),
    "green": ("dark green",),
    "blue": ("dark blue", "navy"),
    "yellow": ("gold", "mustard"),
    "purple": ("violet", "lavender"),
    "orange": ("dark orange", "amber"),
    "circle": ("round", "dot", "ball"),
    "square": ("box", "rectangle"),
    "triangle": ("pyramid", "triangular"),
    "star": ("starfish", "asterisk"),
    "large": ("big",),
    "small": ("little", "tiny"),
    "yes": ("yeah", "yep"),
    "no": ("nope", "none"),
    "left": ("on the left", "left side"),
    "right": ("on the right", "right side"),
    "top": ("at the top", "up"),
    "bottom": ("at the bottom", "down"),
    "center": ("in the middle", "middle"),
    **{str(n): (word,) for n, word in enumerate(NUMBER_WORDS)},
}
P_VARIANT, P_WRONG = 0.1, 0.04
HUMANS = 10


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(shape: Shape, size: bool = True, color: bool = True, det: str | None = None) -> str:
    words = ([shape.size] if size else []) + ([shape.color] if color else []) + [shape.kind]
    phrase = " ".join(words)
    return f"{det or article(phrase)} {phrase}"


def join_and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def plural(kind: str) -> str:
    return kind + "s"


def sentence(text: str) -> str:
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text[-1] in ".?!" else ".")


# Attribute sets tried from the shortest, so "the circle" is preferred to "the large red circle".
_REFERENCE_ORDER: tuple[tuple[str, ...], ...] = (
    (),
    ("color",),
    ("size",),
    ("size", "color"),
    ("position",),
    ("color", "position"),
)


def refer(scene: Scene, shape: Shape, omit: frozenset[str] = frozenset()) -> str | None:
    """The shortest definite description picking out `shape` in `scene`, not using attributes in `omit`."""
    for attrs in _REFERENCE_ORDER:
        if omit.intersection(attrs):
            continue
        matches = [
            s for s in scene.shapes if all(getattr(s, a) == getattr(shape, a) for a in attrs + ("kind",))
        ]
        if matches == [shape]:
            base = noun_phrase(shape, size="size" in attrs, color="color" in attrs, det="the")
            return f"{base} {WHERE[shape.position]}" if "position" in attrs else base
    return None


# ---------------------------------------------------------------------------------------------- captions

Captioner = Callable[[Scene, random.Random], str]
CAPTIONS: Registry[Captioner] = Registry("caption style")


def _count_phrase(n: int) -> str:
    return f"{NUMBER_WORDS[n]} shape" + ("s" if n > 1 else "")


@CAPTIONS.register("positions")
def _positions(scene: Scene, rng: random.Random) -> str:
    return join_and([f"{noun_phrase(s)} {WHERE[s.position]}" for s in scene.ordered()])


@CAPTIONS.register("count")
def _count(scene: Scene, rng: random.Random) -> str:
    return f"{_count_phrase(scene.count)}: " + join_and([noun_phrase(s) for s in scene.ordered()])


@CAPTIONS.register("where_first")
def _where_first(scene: Scene, rng: random.Random) -> str:
    return "; ".join(f"{WHERE[s.position]} there is {noun_phrase(s)}" for s in scene.ordered())


@CAPTIONS.register("colors")
def _colors(scene: Scene, rng: random.Random) -> str:
    shapes = list(scene.shapes)
    rng.shuffle(shapes)
    return join_and([noun_phrase(s, size=False) for s in shapes])


def _kinds_phrase(scene: Scene) -> str:
    counts: dict[str, int] = {}
    for s in scene.ordered():
        counts[s.kind] = counts.get(s.kind, 0) + 1
    return join_and(
        [f"{article(k)} {k}" if n == 1 else f"{NUMBER_WORDS[n]} {plural(k)}" for k, n in counts.items()]
    )


@CAPTIONS.register("picture_of")
def _picture_of(scene: Scene, rng: random.Random) -> str:
    return f"a picture of {_kinds_phrase(scene)}"


@CAPTIONS.register("there_is")
def _there_is(scene: Scene, rng: random.Random) -> str:
    return "there is " + join_and([f"{noun_phrase(s)} {WHERE[s.position]}" for s in scene.ordered()])


@CAPTIONS.register("background")
def _background(scene: Scene, rng: random.Random) -> str:
    return join_and([noun_phrase(s) for s in scene.ordered()]) + " on a light background"


# Styles that name every shape's colour, size and position, so a change between two pictures shows.
COMPLETE_CAPTIONS: tuple[str, ...] = ("positions", "there_is", "where_first")


def caption(scene: Scene, style: str, rng: random.Random) -> str:
    return sentence(CAPTIONS.get(style)(scene, rng))


def random_caption(scene: Scene, rng: random.Random) -> str:
    return caption(scene, rng.choice(sorted(CAPTIONS)), rng)


def reference_captions(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """`n` captions in distinct styles, as COCO has five annotators per image."""
    return [caption(scene, style, rng) for style in rng.sample(sorted(CAPTIONS), n)]


def detailed_description(scene: Scene) -> str:
    verb = "is" if scene.count == 1 else "are"
    parts = [f"There {verb} {_count_phrase(scene.count)} on a light background."]
    parts += [sentence(f"{WHERE[s.position]} there is {noun_phrase(s)}") for s in scene.ordered()]
    return " ".join(parts)


# ------------------------------------------------------------------------------------------------- VQA


@dataclass(frozen=True)
class QA:
    """One question about a scene with its canonical short answer and a full-sentence answer."""

    question: str
    answer: str
    sentence: str
    question_type: str  # VQA-style leading words ("what color is the", "how many", "is there a")
    answer_type: str  # "yes/no" | "number" | "other"
    mistakes: tuple[str, ...] = ()  # plausible wrong answers a careless annotator gives


QuestionMaker = Callable[[Scene, random.Random], list[QA]]
QUESTIONS: Registry[QuestionMaker] = Registry("question maker")


def _others(domain: tuple[str, ...], answer: str) -> tuple[str, ...]:
    return tuple(x for x in domain if x != answer)


@QUESTIONS.register("color")
def _ask_color(scene: Scene, rng: random.Random) -> list[QA]:
    out = []
    for shape in scene.shapes:
        ref = refer(scene, shape, omit=frozenset({"color"}))
        if ref:
            out.append(
                QA(
                    f"what color is {ref}?",
                    shape.color,
                    sentence(f"{ref} is {shape.color}"),
                    "what color is the",
                    "other",
                    _others(COLORS, shape.color),
                )
            )
    return out


@QUESTIONS.register("count")
def _ask_count(scene: Scene, rng: random.Random) -> list[QA]:
    n = scene.count
    verb = "is" if n == 1 else "are"
    q = rng.choice(("how many shapes are there?", "how many shapes are in the picture?"))
    return [
        QA(
            q,
            str(n),
            sentence(f"there {verb} {_count_phrase(n)}"),
            "how many",
            "number",
            _others(("1", "2", "3"), str(n)),
        )
    ]


@QUESTIONS.register("count_kind")
def _ask_count_kind(scene: Scene, rng: random.Random) -> list[QA]:
    return [count_kind_qa(scene, rng.choice(KINDS))]


def _count(scene: Scene, kind: str) -> int:
    return sum(s.kind == kind for s in scene.shapes)


def _holds(scene: Scene, color_kind: tuple[str, str]) -> bool:
    return any((s.color, s.kind) == color_kind for s in scene.shapes)


def count_kind_qa(scene: Scene, kind: str) -> QA:
    n = _count(scene, kind)
    said = f"there {'is' if n == 1 else 'are'} {NUMBER_WORDS[n] if n else 'no'} {kind if n == 1 else plural(kind)}"
    return QA(
        f"how many {plural(kind)} are there?",
        str(n),
        sentence(said),
        "how many",
        "number",
        _others(("0", "1", "2"), str(n)),
    )


@QUESTIONS.register("shape_at")
def _ask_shape_at(scene: Scene, rng: random.Random) -> list[QA]:
    return [
        QA(
            f"what shape is {WHERE[s.position]}?",
            s.kind,
            sentence(f"the shape {WHERE[s.position]} is {article(s.kind)} {s.kind}"),
            "what shape is",
            "other",
            _others(KINDS, s.kind),
        )
        for s in scene.shapes
    ]


@QUESTIONS.register("exists")
def _ask_exists(scene: Scene, rng: random.Random) -> list[QA]:
    present = {(s.color, s.kind) for s in scene.shapes}
    if rng.random() < 0.5:
        color, kind = rng.choice(sorted(present))
    else:
        absent = [(c, k) for c in COLORS for k in KINDS if (c, k) not in present]
        color, kind = rng.choice(absent)
    return [exists_qa(scene, color, kind)]


def exists_qa(scene: Scene, color: str, kind: str) -> QA:
    phrase = f"{article(color)} {color} {kind}"
    yes = _holds(scene, (color, kind))
    said = f"yes, there is {phrase}" if yes else f"no, there is no {color} {kind}"
    answer = "yes" if yes else "no"
    return QA(
        f"is there {phrase}?", answer, sentence(said), "is there a", "yes/no", _others(("yes", "no"), answer)
    )


@QUESTIONS.register("size")
def _ask_size(scene: Scene, rng: random.Random) -> list[QA]:
    out = []
    for shape in scene.shapes:
        ref = refer(scene, shape, omit=frozenset({"size"}))
        if ref:
            a, b = rng.sample(SIZES, 2)
            out.append(
                QA(
                    f"is {ref} {a} or {b}?",
                    shape.size,
                    sentence(f"{ref} is {shape.size}"),
                    "is the",
                    "other",
                    _others(SIZES, shape.size),
                )
            )
    return out


@QUESTIONS.register("where")
def _ask_where(scene: Scene, rng: random.Random) -> list[QA]:
    out = []
    for shape in scene.shapes:
        ref = refer(scene, shape, omit=frozenset({"position"}))
        if ref:
            out.append(
                QA(
                    f"where is {ref}?",
                    shape.position,
                    sentence(f"{ref} is {WHERE[shape.position]}"),
                    "where is the",
                    "other",
                    _others(POSITIONS, shape.position),
                )
            )
    return out


def vqa_questions(scene: Scene, rng: random.Random, n: int = 4) -> list[QA]:
    """Up to `n` questions about `scene`, each from a different question maker."""
    makers = sorted(QUESTIONS)
    rng.shuffle(makers)
    out: list[QA] = []
    for name in makers:
        candidates = QUESTIONS.get(name)(scene, rng)
        if candidates:
            out.append(rng.choice(candidates))
        if len(out) == n:
            break
    return out


def distractor_questions(scene: Scene, earlier: Sequence[Scene]) -> list[QA]:
    """Count and exists questions whose answer for `scene` differs from an earlier image's of the sequence:
    a reply that reads an earlier image instead of its own turn's gets them wrong, as 4-shot prompts did
    ("how many stars?" answered 1 when a demonstration's picture had a star). As many are answered 0 or no
    as otherwise (one of those when no other is): asked only about shapes the turn's image lacks, every answer
    was 0 or no, and SFT learnt "a later turn answers no" instead of reading the image (README, ICL)."""
    shown = (scene, *earlier)
    kinds = sorted({s.kind for image in shown for s in image.shapes})
    pairs = sorted({(s.color, s.kind) for image in shown for s in image.shapes})
    asked = [count_kind_qa(scene, k) for k in kinds if any(_count(e, k) != _count(scene, k) for e in earlier)]
    asked += [exists_qa(scene, *p) for p in pairs if any(_holds(e, p) != _holds(scene, p) for e in earlier)]
    negative = [qa for qa in asked if qa.answer in ("0", "no")]
    positive = [qa for qa in asked if qa.answer not in ("0", "no")]
    return positive + negative[: max(1, len(positive))]


def human_answers(qa: QA, rng: random.Random, n: int = HUMANS) -> list[str]:
    """What `n` annotators answered: mostly the canonical answer, sometimes a variant or a mistake."""
    answers = []
    for _ in range(n):
        draw = rng.random()
        if draw < P_WRONG and qa.mistakes:
            answers.append(rng.choice(qa.mistakes))
        elif draw < P_WRONG + P_VARIANT and qa.answer in VARIANTS:
            answers.append(rng.choice(VARIANTS[qa.answer]))
        else:
            answers.append(qa.answer)
    return answers


def most_common(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0]
