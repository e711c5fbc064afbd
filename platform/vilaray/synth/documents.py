"""Interleaved multi-image documents: a story, album or quiz whose sentences describe the images in order.

A document is a list of sentences plus images, each image placed immediately BEFORE the sentence it is
matched to (MMC4's convention, used for OBELICS too). Every document keeps one phrasing style for all of
its images, so the earlier image-text pairs of a document demonstrate how the later ones continue: the
in-context pattern that interleaved pretraining is meant to teach.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from vilaray.registry import Registry
from vilaray.synth.language import (
    CAPTIONS,
    COMPLETE_CAPTIONS,
    QUESTIONS,
    WHERE,
    caption,
    noun_phrase,
    refer,
    sentence,
)
from vilaray.synth.scenes import COLORS, MAX_SHAPES, SIZES, Scene, Split, random_shape, sample_scene


@dataclass(frozen=True)
class DocImage:
    scene: Scene
    sentence_index: int  # the sentence this image sits immediately before


@dataclass(frozen=True)
class Document:
    id: str
    sentences: tuple[str, ...]
    images: tuple[DocImage, ...]

    def segments(self) -> list[str | DocImage]:
        """Reading order: every image right before its matched sentence."""
        out: list[str | DocImage] = []
        for i, text in enumerate(self.sentences):
            out += [im for im in self.images if im.sentence_index == i]
            out.append(text)
        return out

    def blocks(self) -> list[str | DocImage]:
        """Reading order with consecutive sentences joined into one paragraph (OBELICS' text items)."""
        out: list[str | DocImage] = []
        for part in self.segments():
            if isinstance(part, str) and out and isinstance(out[-1], str):
                out[-1] = f"{out[-1]} {part}"
            else:
                out.append(part)
        return out


# --------------------------------------------------------------------------------------------- transitions

Transition = Callable[[Scene, random.Random], tuple[Scene, str] | None]
TRANSITIONS: Registry[Transition] = Registry("transition")


def _pick(scene: Scene, rng: random.Random):
    shape = rng.choice(scene.ordered())
    return shape, refer(scene, shape) or noun_phrase(shape, det="the")


@TRANSITIONS.register("move")
def _move(scene: Scene, rng: random.Random) -> tuple[Scene, str] | None:
    free = scene.free_positions()
    if not free:
        return None
    shape, ref = _pick(scene, rng)
    moved = replace(shape, position=rng.choice(free))
    said = rng.choice(("in the next picture, {ref} moves {where}", "then {ref} moves {where}"))
    return scene.replace_shape(shape, moved), sentence(said.format(ref=ref, where=WHERE[moved.position]))


@TRANSITIONS.register("recolor")
def _recolor(scene: Scene, rng: random.Random) -> tuple[Scene, str] | None:
    shape, ref = _pick(scene, rng)
    new = replace(shape, color=rng.choice([c for c in COLORS if c != shape.color]))
    return scene.replace_shape(shape, new), sentence(f"next, {ref} turns {new.color}")


@TRANSITIONS.register("resize")
def _resize(scene: Scene, rng: random.Random) -> tuple[Scene, str] | None:
    shape, ref = _pick(scene, rng)
    new = replace(shape, size=next(s for s in SIZES if s != shape.size))
    verb = "grows" if new.size == "large" else "shrinks"
    return scene.replace_shape(shape, new), sentence(f"then {ref} {verb}")


@TRANSITIONS.register("add")
def _add(scene: Scene, rng: random.Random) -> tuple[Scene, str] | None:
    if scene.count >= MAX_SHAPES:
        return None
    new = random_shape(rng, rng.choice(scene.free_positions()))
    return scene.with_shape(new), sentence(f"then {noun_phrase(new)} appears {WHERE[new.position]}")


@TRANSITIONS.register("remove")
def _remove(scene: Scene, rng: random.Random) -> tuple[Scene, str] | None:
    if scene.count <= 1:
        return None
    shape, ref = _pick(scene, rng)
    return scene.replace_shape(shape, None), sentence(f"then {ref} disappears")


def next_scene(scene: Scene, rng: random.Random, split: Split, tries: int = 50) -> tuple[Scene, str]:
    """A changed scene that stays inside `split`, with the sentence that tells what changed."""
    names = sorted(TRANSITIONS)
    for _ in range(tries):
        result = TRANSITIONS.get(rng.choice(names))(scene, rng)
        if result is not None and result[0].split == split:
            return result
    fresh = sample_scene(rng, split)
    return fresh, "Then the picture changes completely."


# ------------------------------------------------------------------------------------------------- styles

Style = Callable[[random.Random, int, Split], tuple[list[str], list[DocImage]]]
STYLES: Registry[Style] = Registry("document style")


_STORY_INTROS = (
    "Here is a little story about shapes.",
    "Watch how the shapes change.",
    "A story in {n} pictures.",
)


@STYLES.register("story")
def _story(rng: random.Random, n_images: int, split: Split) -> tuple[list[str], list[DocImage]]:
    describe = rng.choice(COMPLETE_CAPTIONS)
    sentences = [rng.choice(_STORY_INTROS).format(n=n_images)]
    images: list[DocImage] = []
    scene = sample_scene(rng, split)
    for i in range(n_images):
        if i == 0:
            sentences.append("First, look at this picture.")
        else:
            scene, said = next_scene(scene, rng, split)
            sentences.append(said)
        images.append(DocImage(scene, len(sentences)))
        sentences.append(caption(scene, describe, rng))
    if rng.random() < 0.5:
        sentences.append("That is the end of the story.")
    return sentences, images


_ALBUM_INTROS = (
    "Some pictures from the shapes world.",
    "A small photo album.",
    "Here are {n} captioned pictures.",
)
_ALBUM_FORMATS = ("{caption}", "Output: {caption}", "This picture shows {lower}", "Caption: {caption}")


@STYLES.register("album")
def _album(rng: random.Random, n_images: int, split: Split) -> tuple[list[str], list[DocImage]]:
    describe = rng.choice(sorted(CAPTIONS))
    fmt = rng.choice(_ALBUM_FORMATS)
    sentences = [rng.choice(_ALBUM_INTROS).format(n=n_images)]
    images: list[DocImage] = []
    for _ in range(n_images):
        scene = sample_scene(rng, split)
        text = caption(scene, describe, rng)
        images.append(DocImage(scene, len(sentences)))
        sentences.append(fmt.format(caption=text, lower=text[0].lower() + text[1:]))
    return sentences, images


_QUIZ_INTROS = (
    "A quiz about shapes.",
    "Answer the questions about each picture.",
    "Test yourself on {n} pictures.",
)
_QUIZ_FORMATS = ("Question: {q} Short answer: {a}", "Q: {q} A: {a}", "{Q} The answer is {a}.")


@STYLES.register("quiz")
def _quiz(rng: random.Random, n_images: int, split: Split) -> tuple[list[str], list[DocImage]]:
    maker = rng.choice(sorted(QUESTIONS))
    fmt = rng.choice(_QUIZ_FORMATS)
    sentences = [rng.choice(_QUIZ_INTROS).format(n=n_images)]
    images: list[DocImage] = []
    for _ in range(n_images):
        while True:
            scene = sample_scene(rng, split)
            candidates = QUESTIONS.get(maker)(scene, rng)
            if candidates:
                break
        qa = rng.choice(candidates)
        images.append(DocImage(scene, len(sentences)))
        sentences.append(fmt.format(q=qa.question, Q=qa.question[0].upper() + qa.question[1:], a=qa.answer))
    return sentences, images


def make_document(
    doc_id: str, rng: random.Random, split: Split, min_images: int = 2, max_images: int = 4
) -> Document:
    kind = rng.choice(sorted(STYLES))
    sentences, images = STYLES.get(kind)(rng, rng.randint(min_images, max_images), split)
    return Document(doc_id, tuple(sentences), tuple(images))


def similarity_matrix(doc: Document, rng: random.Random) -> list[list[float]]:
    """CLIP-like image x sentence similarities: the matched sentence scores highest, as in MMC4."""
    described = {im.sentence_index for im in doc.images}
    rows = []
    for im in doc.images:
        row = []
        for j in range(len(doc.sentences)):
            if j == im.sentence_index:
                low, high = 0.29, 0.36
            elif j in described:
                low, high = 0.17, 0.25
            else:
                low, high = 0.08, 0.16
            row.append(round(rng.uniform(low, high), 4))
        rows.append(row)
    return rows
