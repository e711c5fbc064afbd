"""Pretrains the tiny language model on the world's plain-text corpus: VILA's LLM arrives pretrained on text.

VILA's findings are about what VL pretraining does to a language model that already knows language: freezing
it keeps its text ability but stops it from learning in context from interleaved images; unfreezing it
risks its text ability, which text-only SFT data restores. A randomly initialised tiny LM has nothing to keep
or lose, so the tiny assets get one trained first, on the world's `text` corpus (facts about creatures,
colour mixing, sums and shapes), as `vilaray.synth.tower` trains the tower. Documents whose id the data
pipeline holds out (`vilaray.data.holdout`, the recipe's 5%) are held out here too and give the loss the
build reports against the same model at random init.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vilaray.data.holdout import held_out
from vilaray.synth.manifest import WorldManifest


@dataclass(frozen=True)
class LMPretraining:
    steps: int = 300
    batch: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 20
    # At most this many passes over the corpus: a tiny world's few documents are learned long before
    # `steps` (the test world's corpus is 10 blocks), and more passes would only memorise them.
    max_epochs: float = 16.0
    holdout: float = 0.05  # the tiny recipe's data.holdout: the same documents stay unseen
    seed: int = 0


def corpus(world_dir: str | Path, holdout: float) -> tuple[list[str], list[str]]:
    """The world's plain-text documents, split by the data pipeline's stable id hash: (train, held out)."""
    train, held = [], []
    for path in WorldManifest.load(world_dir).paths("text"):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                (held if held_out(row["id"], holdout) else train).append(row["text"])
    return train, held


def token_blocks(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """The documents as one stream (each followed by eos), cut into [n, seq_len] blocks (the tail dropped;
    a stream shorter than one block is one shorter block)."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    seq_len = min(seq_len, len(ids))
    n = len(ids) // seq_len if seq_len else 0
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def mean_loss(model: torch.nn.Module, blocks: torch.Tensor, batch: int) -> float:
    """Mean next-token loss over `blocks` (text only: no image, the VLM's language path)."""
    model.eval()
    losses = [float(model(input_ids=b, labels=b).loss) for b in blocks.split(batch)]
    return sum(losses) / len(losses) if losses else float("nan")


def pretrain_language_model(
    model: torch.nn.Module, tokenizer, world_dir: str | Path, cfg: LMPretraining = LMPretraining()
) -> dict[str, float]:
    """Train the VLM's language model (and tied embeddings) in place on the world's text; the tower and
    projector are untouched. Returns held-out losses before and after, and the time it took."""
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    train_texts, held_texts = corpus(world_dir, cfg.holdout)
    train, held = (token_blocks(tokenizer, t, cfg.seq_len) for t in (train_texts, held_texts))
    before = mean_loss(model, held, cfg.batch)
    steps = max(1, min(cfg.steps, math.ceil(cfg.max_epochs * len(train) / cfg.batch)))
    warmup = min(cfg.warmup, max(1, steps // 10))
    params = list(model.model.language_model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    # Linear warmup, cosine decay: the usual LM schedule, so the last steps settle rather than bounce.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(steps):
        x = train[torch.randint(0, len(train), (cfg.batch,), generator=gen)]
        model(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    after = mean_loss(model, held, cfg.batch)
    return {
        "heldout_loss": after,
        "random_init_heldout_loss": before,
        "heldout_tokens": int(held.numel()),
        "train_tokens": int(train.numel()),
        "steps": steps,
        "seconds": round(time.monotonic() - t0, 1),
    }
