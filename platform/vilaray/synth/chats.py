"""SFT conversations: multi-turn dialogues about one image, and text-only dialogues over the fact base."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from vilaray.registry import Registry
from vilaray.synth.facts import Fact, instruction_turns
from vilaray.synth.language import (
    CAPTIONS,
    caption,
    detailed_description,
    distractor_questions,
    random_caption,
    sentence,
    vqa_questions,
)
from vilaray.synth.scenes import Scene

# LLaVA-1.5's suffix for short-answer VQA data; evals prompting with it get one-word answers.
SHORT_ANSWER = "Answer the question using a single word or phrase."
BRIEF_PROMPTS = (
    "Describe the image briefly.",
    "Give a short caption for this picture.",
    "What does this image show? Answer in one sentence.",
)
DETAIL_PROMPTS = (
    "Describe the image in detail.",
    "What is in this picture?",
    "List every shape you can see.",
)


@dataclass(frozen=True)
class Chat:
    """Alternating user/assistant turns; `scene` is the image the first user turn shows, if any."""

    id: str
    turns: tuple[tuple[str, str], ...]
    scene: Scene | None = None
    asked: tuple[str, ...] = ()  # text-only chats: the fact questions, without any answer-format suffix


ChatStyle = Callable[[Scene, random.Random], list[tuple[str, str]]]
CHAT_STYLES: Registry[ChatStyle] = Registry("chat style")


@CHAT_STYLES.register("short_vqa")
def _short_vqa(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    return [
        (f"{sentence(qa.question)}\n{SHORT_ANSWER}", qa.answer)
        for qa in vqa_questions(scene, rng, rng.randint(2, 4))
    ]


@CHAT_STYLES.register("describe_then_ask")
def _describe_then_ask(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    turns = [(rng.choice(BRIEF_PROMPTS), random_caption(scene, rng))]
    return turns + [
        (sentence(qa.question), qa.sentence) for qa in vqa_questions(scene, rng, rng.randint(1, 2))
    ]


@CHAT_STYLES.register("detailed")
def _detailed(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    turns = [(rng.choice(DETAIL_PROMPTS), detailed_description(scene))]
    return turns + [(sentence(qa.question), qa.sentence) for qa in vqa_questions(scene, rng, 1)]


_STYLE_WEIGHTS = {"short_vqa": 5, "describe_then_ask": 3, "detailed": 2}


def image_chat(chat_id: str, scene: Scene, rng: random.Random) -> Chat:
    names = sorted(CHAT_STYLES)
    name = rng.choices(names, weights=[_STYLE_WEIGHTS[n] for n in names])[0]
    return Chat(chat_id, tuple(CHAT_STYLES.get(name)(scene, rng)), scene)


def image_sequence_chat(
    chat_id: str, scenes: list[Scene], rng: random.Random, distractors: float = 0.0
) -> Chat:
    """One task over several images, a user turn each (its image, then the same kind of request) and the
    reply about that turn's image: a sequence of solved examples, the layout of a k-shot prompt. Without
    such chats every SFT conversation is about its first image, and a few-shot prompt's later images were
    never what a reply had to read (the ICL probe in the README). With `distractors`, that share of a
    short-answer sequence's later turns asks what an earlier image answers otherwise, where it can."""
    kind = rng.choice(("short_vqa", "brief"))
    prompt = rng.choice(BRIEF_PROMPTS)
    # One annotator's style for the whole sequence, as a dataset's examples share its style: what the
    # earlier replies show is then the format the next one should take (a caption prompt's k-shot
    # demonstrations set its style). With a style drawn per turn, the demonstrations said nothing.
    style = rng.choice(sorted(CAPTIONS))
    turns = []
    for i, scene in enumerate(scenes):
        if kind == "brief":
            turns.append((prompt, caption(scene, style, rng)))
            continue
        # No draw at 0, so a world without distractors is the one generated before they existed.
        asked = distractor_questions(scene, scenes[:i]) if distractors and rng.random() < distractors else []
        qa = rng.choice(asked or vqa_questions(scene, rng, 2))
        turns.append((f"{sentence(qa.question)}\n{SHORT_ANSWER}", qa.answer))
    return Chat(chat_id, tuple(turns), scenes[0])


# Text-only instructions answer in a sentence or, like LLaVA-1.5's short-answer VQA data, in one word when
# the question carries the short-answer suffix; text-only multiple choice is prompted the same way.
P_SHORT_TEXT_ANSWER = 0.5


def fact_turn(fact: Fact, question: str, rng: random.Random) -> tuple[str, str]:
    if rng.random() < P_SHORT_TEXT_ANSWER:
        return f"{question}\n{SHORT_ANSWER}", fact.answer
    return question, fact.statement


def text_chat(chat_id: str, facts: list[Fact], rng: random.Random, first: Fact | None = None) -> Chat:
    asked = instruction_turns(facts, rng, first)
    while not asked:  # a fact whose every phrasing is held out gives no turn; ask about another
        asked = instruction_turns(facts, rng)
    turns = tuple(fact_turn(fact, question, rng) for fact, question in asked)
    return Chat(chat_id, turns, asked=tuple(question for _, question in asked))
