"""Scenes of the shapes world: the attribute vocabulary, seeded sampling and the content-hash split rule.

Split rule (train vs held-out eval), decided by CONTENT, never by the seed or by an index:

* a scene is ``eval`` iff ``sha256("scene:" + canonical)`` read as a big-endian integer from its first
  four bytes, modulo 1000, is below ``EVAL_SCENE_PER_MILLE`` (10%). ``canonical`` is the sorted list of
  its shapes' ``kind:color:size:position`` joined by ``|``, so jitter, background and image size do not
  matter, and worlds built from different seeds share one split;
* a text question (the fact base's question phrasings) is ``eval`` iff the same hash of
  ``"question:" + normalised text`` (lower case, single spaces) is below ``EVAL_QUESTION_PER_MILLE``
  (25%). Facts themselves are stated in the training corpus; only the wording of eval questions is new.

Training files only ever hold ``train`` scenes and questions; eval files only ``eval`` ones, except the
few-shot support splits (``eval/vqa_train``, ``eval/captions_train``, ``eval/text_mc/dev.jsonl``) which are
drawn from ``train`` on purpose, like the train-split demonstrations of OpenFlamingo and MMLU's dev set.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "large")
# Reading order (top to bottom, left to right) so descriptions list shapes the way a person scans.
POSITIONS: tuple[str, ...] = ("top", "left", "center", "right", "bottom")
MAX_SHAPES = 3

Split = Literal["train", "eval"]
EVAL_SCENE_PER_MILLE = 100
EVAL_QUESTION_PER_MILLE = 250
SPLIT_RULE = (__doc__ or "").split("\n\n", 1)[1].strip()


@dataclass(frozen=True, order=True)
class Shape:
    kind: str
    color: str
    size: str
    position: str

    def key(self) -> str:
        return f"{self.kind}:{self.color}:{self.size}:{self.position}"


@dataclass(frozen=True)
class Scene:
    """1-3 shapes, each in a distinct named position."""

    shapes: tuple[Shape, ...]

    def __post_init__(self) -> None:
        positions = [s.position for s in self.shapes]
        if not 1 <= len(positions) <= MAX_SHAPES or len(set(positions)) != len(positions):
            raise ValueError(f"a scene holds 1-{MAX_SHAPES} shapes in distinct positions, got {positions}")

    @property
    def count(self) -> int:
        return len(self.shapes)

    def canonical(self) -> str:
        return "|".join(sorted(s.key() for s in self.shapes))

    def hash(self) -> str:
        return hashlib.sha256(f"scene:{self.canonical()}".encode()).hexdigest()[:16]

    @property
    def split(self) -> Split:
        return scene_split(self)

    def ordered(self) -> tuple[Shape, ...]:
        return tuple(sorted(self.shapes, key=lambda s: POSITIONS.index(s.position)))

    def free_positions(self) -> tuple[str, ...]:
        taken = {s.position for s in self.shapes}
        return tuple(p for p in POSITIONS if p not in taken)

    def replace_shape(self, old: Shape, new: Shape | None) -> Scene:
        shapes = tuple(s for s in self.shapes if s != old)
        return Scene(shapes + ((new,) if new is not None else ()))

    def with_shape(self, new: Shape) -> Scene:
        return Scene(self.shapes + (new,))


def _per_mille(namespace: str, text: str) -> int:
    digest = hashlib.sha256(f"{namespace}:{text}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 1000


def scene_split(scene: Scene) -> Split:
    return "eval" if _per_mille("scene", scene.canonical()) < EVAL_SCENE_PER_MILLE else "train"


def normalise_question(text: str) -> str:
    return " ".join(text.lower().split())


def question_split(text: str) -> Split:
    return "eval" if _per_mille("question", normalise_question(text)) < EVAL_QUESTION_PER_MILLE else "train"


def item_rng(seed: int, stream: str, index: int) -> random.Random:
    """One RNG per generated item, so any item can be rebuilt alone and order never matters."""
    # String seeds are hashed with SHA-512 by `random`, stable across processes (unlike hash()).
    return random.Random(f"{seed}/{stream}/{index}")


def random_shape(rng: random.Random, position: str) -> Shape:
    return Shape(rng.choice(KINDS), rng.choice(COLORS), rng.choice(SIZES), position)


def sample_scene(rng: random.Random, split: Split | None = None, max_tries: int = 10_000) -> Scene:
    """A uniformly random scene, redrawn until it falls in `split` (rejection keeps the split rule pure)."""
    for _ in range(max_tries):
        n = rng.randint(1, MAX_SHAPES)
        scene = Scene(tuple(random_shape(rng, p) for p in rng.sample(POSITIONS, n)))
        if split is None or scene_split(scene) == split:
            return scene
    raise RuntimeError(f"no {split} scene found in {max_tries} draws")
