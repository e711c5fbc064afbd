"""The world's size presets (`WorldScale`) and its `manifest.json` (`WorldManifest`): what a build wrote."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from vilaray.registry import Registry
from vilaray.synth.scenes import SPLIT_RULE

FORMAT = "vilaray-shapes-world"
# 2: image-sequence SFT chats in sft_messages; 300 caption eval images (small). 3: one caption style per
# caption sequence in sft_messages.
VERSION = 3
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class WorldScale:
    """How many of each thing to generate. Counts are samples (pairs, docs, conversations, eval images)."""

    name: str
    pairs: int  # COYO parquet; WebDataset holds the same samples
    llava_pretrain: int
    obelics_docs: int  # obelics/ and obelics_paths/ hold the same documents
    mmc4_docs: int
    text_docs: int
    sft_image_chats: int
    sft_text_chats: int
    message_chats: int
    text_instructions: int
    vqa_eval_images: int
    vqa_support_images: int
    caption_eval_images: int
    caption_support_images: int
    photo_pairs: int
    photo_docs: int
    shards: int  # files per kind
    facts: int = 30  # invented creatures (4 facts each) and sums in the fact base
    mc_dev_per_subject: int = 5
    vqa_questions_per_image: int = 4
    image_size: int = 64
    # An ICL probe's knob (README, "In-context learning"): the share of a short-answer image sequence's later
    # turns in sft_messages that ask what an earlier image answers otherwise. 0 is the shipped world.
    sequence_distractors: float = 0.0
    photo_size: int = 512


SCALES: Registry[WorldScale] = Registry(
    "world scale",
    {
        "tiny": WorldScale(
            "tiny",
            pairs=32,
            llava_pretrain=24,
            obelics_docs=8,
            mmc4_docs=8,
            text_docs=48,
            sft_image_chats=24,
            sft_text_chats=12,
            message_chats=12,
            text_instructions=48,
            vqa_eval_images=24,
            vqa_support_images=12,
            caption_eval_images=16,
            caption_support_images=8,
            photo_pairs=4,
            photo_docs=2,
            shards=2,
        ),
        "small": WorldScale(
            "small",
            pairs=2000,
            llava_pretrain=2000,
            obelics_docs=600,
            mmc4_docs=600,
            text_docs=1500,
            sft_image_chats=2000,
            sft_text_chats=600,
            message_chats=500,
            text_instructions=1500,
            vqa_eval_images=300,
            vqa_support_images=100,
            caption_eval_images=300,
            caption_support_images=50,
            photo_pairs=200,
            photo_docs=40,
            shards=4,
            # Sized for the demo's SFT budget: the tiny LM learns an invented fact only after ~200 repetitions
            # (a probe on 30 creature colours: 17% -> 100% between steps 150 and 250 of 32 questions). With 30
            # (163 facts) the demo's SFT learned none; with 12 (73 facts) it learns the sums (89% on held-out
            # phrasings, 55% with 30), not yet the creatures.
            facts=12,
        ),
        "medium": WorldScale(
            "medium",
            pairs=8000,
            llava_pretrain=8000,
            obelics_docs=2500,
            mmc4_docs=2500,
            text_docs=5000,
            sft_image_chats=8000,
            sft_text_chats=2000,
            message_chats=2000,
            text_instructions=5000,
            vqa_eval_images=1000,
            vqa_support_images=200,
            caption_eval_images=500,
            caption_support_images=100,
            photo_pairs=1000,
            photo_docs=200,
            shards=8,
        ),
    },
)


def resolve_scale(scale: WorldScale | str) -> WorldScale:
    if isinstance(scale, WorldScale):
        return scale
    return SCALES.get(scale)


@dataclass(frozen=True)
class WorldManifest:
    """What a build wrote: enough for recipes and readers to find every file without globbing."""

    root: Path  # where the world is now; not serialised, so a world can be moved
    seed: int
    scale: WorldScale
    photo: bool
    counts: dict[str, int]
    files: dict[str, list[str]]  # kind -> data files, relative to root
    image_roots: dict[str, str]  # kind -> folder its relative image paths resolve against
    split_rule: str = field(default=SPLIT_RULE)
    version: int = VERSION

    def paths(self, kind: str) -> list[Path]:
        return [self.root / rel for rel in self.files.get(kind, [])]

    def identity(self) -> dict:
        """What the tiny assets built from this world depend on (they record it and are rebuilt for another):
        version, seed and scale, less the ICL probe's knob, which changes only who asks what in
        sft_messages; the probe's world reuses the shipped assets on purpose, so its SFT can start from the
        shipped pretrain export (README, "In-context learning")."""
        scale = {k: v for k, v in asdict(self.scale).items() if k != "sequence_distractors"}
        return {"version": self.version, "seed": self.seed, "scale": scale}

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": self.version,
            "seed": self.seed,
            "scale": asdict(self.scale),
            "photo": self.photo,
            "image_size": self.scale.image_size,
            "photo_size": self.scale.photo_size,
            "split_rule": self.split_rule,
            "counts": self.counts,
            "files": self.files,
            "image_roots": self.image_roots,
        }

    @classmethod
    def load(cls, root: str | Path) -> WorldManifest:
        root = Path(root)
        data = json.loads((root / MANIFEST).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{root / MANIFEST} is not a shapes-world manifest")
        known = {f.name for f in fields(WorldScale)}
        scale = WorldScale(**{k: v for k, v in data["scale"].items() if k in known})
        return cls(
            root,
            data["seed"],
            scale,
            data["photo"],
            data["counts"],
            data["files"],
            data["image_roots"],
            data["split_rule"],
            data["version"],
        )
