"""The world's text-only knowledge: an invented fact base, corpus paragraphs, instructions and MC items.

Facts (invented creatures, colour mixing, small sums, shape geometry) are drawn from the seed. Each fact
has several question phrasings; `scenes.question_split` files every phrasing under train or eval by its
own text hash, so the text-only eval asks about facts the training corpus states, in words it never used.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from vilaray.registry import Registry
from vilaray.synth.scenes import COLORS, KINDS, Split, question_split


@dataclass(frozen=True)
class Fact:
    topic: str  # the MMLU-style "subject": creatures | color_mixing | arithmetic | shapes
    subject: str  # what the fact is about; a corpus paragraph gathers one subject's facts
    answer: str
    statement: str
    questions: tuple[str, ...]
    domain: tuple[str, ...]  # answers of the same type, for multiple-choice distractors

    def questions_in(self, split: Split) -> list[str]:
        return [q for q in self.questions if question_split(q) == split]


@dataclass(frozen=True)
class McItem:
    question: str
    subject: str
    choices: tuple[str, str, str, str]
    answer: int

    def to_json(self) -> dict:
        return {
            "question": self.question,
            "subject": self.subject,
            "choices": list(self.choices),
            "answer": self.answer,
        }


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


# ------------------------------------------------------------------------------------------ creatures


@dataclass(frozen=True)
class Relation:
    domain: tuple[str, ...]
    statement: str
    questions: tuple[str, ...]


FACT_COLORS = COLORS + ("pink", "gray", "teal", "brown")
RELATIONS: dict[str, Relation] = {
    "color": Relation(
        FACT_COLORS,
        "{Names} are {x}.",
        (
            "What color are {names}?",
            "What colour is a {name}?",
            "Which color does a {name} have?",
            "What is the color of a {name}?",
            "Tell me the color of {names}.",
        ),
    ),
    "legs": Relation(
        ("no", "two", "four", "six", "eight"),
        "A {name} has {x} legs.",
        (
            "How many legs does a {name} have?",
            "How many legs do {names} have?",
            "What is the number of legs of a {name}?",
            "Count the legs of a {name}.",
            "A {name} has how many legs?",
        ),
    ),
    "home": Relation(
        ("the desert", "the forest", "the sea", "the mountains", "caves", "the clouds", "rivers", "the snow"),
        "{Names} live in {x}.",
        (
            "Where do {names} live?",
            "Where does a {name} live?",
            "What is the home of a {name}?",
            "Where can you find {names}?",
            "In what place do {names} live?",
        ),
    ),
    "food": Relation(
        ("berries", "fish", "leaves", "pebbles", "honey", "seeds", "mushrooms", "grass"),
        "{Names} eat {x}.",
        (
            "What do {names} eat?",
            "What does a {name} eat?",
            "What is the food of {names}?",
            "What food does a {name} like?",
            "Which food do {names} eat?",
        ),
    ),
}

# Syllable parts for invented creature names; no coda ends in s/x/z, so every plural is name + "s".
_ONSETS = ("b", "bl", "d", "dr", "f", "fl", "g", "gl", "k", "kr", "m", "n", "p", "pl", "s", "sn", "t", "tr", "v", "z")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "oo", "ee", "ai")
_CODAS = ("b", "k", "m", "n", "p", "rb", "rk", "t", "g", "l", "mp", "nd")


def creature_names(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        if rng.random() < 0.35:
            name = rng.choice(_ONSETS) + rng.choice(_VOWELS) + name
        if name not in names:
            names.append(name)
    return names


def _creatures(rng: random.Random, n: int) -> list[Fact]:
    facts = []
    for name in creature_names(rng, n):
        names = name + "s"
        for relation in RELATIONS.values():
            x = rng.choice(relation.domain)
            slots = {"name": name, "names": names, "Names": _cap(names), "x": x}
            statement = relation.statement.format(**slots)
            facts.append(
                Fact(
                    "creatures",
                    name,
                    x,
                    statement,
                    tuple(q.format(**slots) for q in relation.questions),
                    relation.domain,
                )
            )
    return facts


# ------------------------------------------------------------------------------------- other families

_MIXES = (
    ("red", "blue", "purple"),
    ("red", "yellow", "orange"),
    ("blue", "yellow", "green"),
    ("red", "white", "pink"),
    ("black", "white", "gray"),
    ("blue", "white", "light blue"),
    ("yellow", "white", "cream"),
    ("red", "green", "brown"),
)
_MIX_QUESTIONS = (
    "What color do you get when you mix {a} and {b}?",
    "If you mix {b} and {a}, what color do you get?",
    "What do {a} and {b} make when mixed?",
    "Mixing {a} with {b} gives which color?",
    "Which color comes from mixing {b} and {a}?",
)


def _color_mixing(rng: random.Random, n: int) -> list[Fact]:
    domain = tuple(sorted({m[2] for m in _MIXES} | set(COLORS)))
    return [
        Fact(
            "color_mixing",
            f"{a}+{b}",
            x,
            f"Mixing {a} and {b} makes {x}.",
            tuple(q.format(a=a, b=b) for q in _MIX_QUESTIONS),
            domain,
        )
        for a, b, x in _MIXES
    ]


_SUM_QUESTIONS = (
    "What is {a} plus {b}?",
    "How much is {a} + {b}?",
    "What do you get if you add {a} and {b}?",
    "What is the sum of {a} and {b}?",
    "Add {a} and {b}. What is the result?",
)


def _arithmetic(rng: random.Random, n: int) -> list[Fact]:
    pairs = rng.sample([(a, b) for a in range(1, 10) for b in range(1, 10)], min(n, 81))
    domain = tuple(str(k) for k in range(2, 19))
    return [
        Fact(
            "arithmetic",
            f"{a}+{b}",
            str(a + b),
            f"{a} plus {b} is {a + b}.",
            tuple(q.format(a=a, b=b) for q in _SUM_QUESTIONS),
            domain,
        )
        for a, b in pairs
    ]


_GEOMETRY = (
    ("triangle", "three", "sides"),
    ("square", "four", "sides"),
    ("star", "five", "points"),
    ("circle", "no", "corners"),
)


def _shapes(rng: random.Random, n: int) -> list[Fact]:
    domain = ("no", "two", "three", "four", "five", "six")
    facts = []
    for kind, x, part in _GEOMETRY:
        questions = (
            f"How many {part} does a {kind} have?",
            f"How many {part} do {kind}s have?",
            f"What is the number of {part} of a {kind}?",
            f"A {kind} has how many {part}?",
        )
        facts.append(Fact("shapes", kind, x, f"A {kind} has {x} {part}.", questions, domain))
    kinds = ", ".join(KINDS[:-1]) + " and " + KINDS[-1]
    facts.append(
        Fact(
            "shapes",
            "world",
            "four",
            f"The shapes world has four kinds of shapes: {kinds}.",
            (
                "How many kinds of shapes does the shapes world have?",
                "How many different shapes are there in the shapes world?",
                "The shapes world has how many kinds of shapes?",
            ),
            domain,
        )
    )
    return facts


FactFamily = Callable[[random.Random, int], list[Fact]]
FAMILIES: dict[str, FactFamily] = {
    "creatures": _creatures,
    "color_mixing": _color_mixing,
    "arithmetic": _arithmetic,
    "shapes": _shapes,
}


def fact_base(seed: int, size: int = 30) -> list[Fact]:
    """All facts of the world: `size` creatures (four facts each) and `size` sums, plus fixed families."""
    facts: list[Fact] = []
    for name, family in FAMILIES.items():
        facts += family(random.Random(f"{seed}/facts/{name}"), size)
    return facts


# --------------------------------------------------------------------------------------------- texts

Paragraph = Callable[[list[Fact], random.Random], str]
PARAGRAPHS: Registry[Paragraph] = Registry("paragraph")


def _of_topic(facts: list[Fact], topic: str) -> list[Fact]:
    return [f for f in facts if f.topic == topic]


@PARAGRAPHS.register("creature")
def _creature_paragraph(facts: list[Fact], rng: random.Random) -> str:
    subject = rng.choice(sorted({f.subject for f in _of_topic(facts, "creatures")}))
    statements = [f.statement for f in facts if f.subject == subject]
    rng.shuffle(statements)
    intro = rng.choice(
        (
            f"{_cap(subject)}s are creatures of the shapes world.",
            f"Let me tell you about the {subject}.",
            f"The {subject} is a small animal.",
        )
    )
    return " ".join([intro, *statements])


@PARAGRAPHS.register("mixing")
def _mixing_paragraph(facts: list[Fact], rng: random.Random) -> str:
    chosen = rng.sample(_of_topic(facts, "color_mixing"), 3)
    intro = rng.choice(("Painters in the shapes world mix colors.", "Colors can be mixed."))
    return " ".join([intro, *(f.statement for f in chosen)])


@PARAGRAPHS.register("arithmetic")
def _sums_paragraph(facts: list[Fact], rng: random.Random) -> str:
    chosen = rng.sample(_of_topic(facts, "arithmetic"), 3)
    intro = rng.choice(("Counting shapes is easy.", "Here are some sums.", "Numbers add up."))
    return " ".join([intro, *(f.statement for f in chosen)])


@PARAGRAPHS.register("shapes")
def _shapes_paragraph(facts: list[Fact], rng: random.Random) -> str:
    chosen = _of_topic(facts, "shapes")
    statements = [f.statement for f in chosen] + [
        f"Shapes come in six colors: {', '.join(COLORS)}.",
        "A shape can be small or large.",
    ]
    rng.shuffle(statements)
    return " ".join(statements[:4])


_PARAGRAPH_WEIGHTS = {"creature": 6, "mixing": 1, "arithmetic": 2, "shapes": 1}


def corpus_paragraph(facts: list[Fact], rng: random.Random) -> str:
    names = sorted(PARAGRAPHS)
    name = rng.choices(names, weights=[_PARAGRAPH_WEIGHTS[n] for n in names])[0]
    return PARAGRAPHS.get(name)(facts, rng)


def instruction_turns(
    facts: list[Fact], rng: random.Random, first: Fact | None = None
) -> list[tuple[Fact, str]]:
    """1-3 (fact, train-split phrasing of a question about it) pairs; `first` pins the opening fact."""
    chosen = [first] if first is not None else []
    chosen += [rng.choice(facts) for _ in range(rng.randint(1, 3) - len(chosen))]
    turns = []
    for fact in chosen:
        questions = fact.questions_in("train")
        if questions:
            turns.append((fact, rng.choice(questions)))
    return turns


def mc_item(fact: Fact, question: str, rng: random.Random) -> McItem:
    distractors = rng.sample([d for d in fact.domain if d != fact.answer], 3)
    choices = [fact.answer, *distractors]
    rng.shuffle(choices)
    return McItem(question, fact.topic, tuple(choices), choices.index(fact.answer))  # type: ignore[arg-type]
