"""Work every rank runs the same number of forwards for (ZeRO-3 gathers parameters in lockstep)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch


def deal(items: list, rank: int, world: int, per_round: int) -> tuple[list, int]:
    """This rank's items (dealt round-robin) and the rounds of `per_round` every rank must run: the most
    any rank needs. A rank with fewer items fills its extra rounds with work whose results it drops."""
    rounds = math.ceil(math.ceil(len(items) / world) / per_round) if items else 0
    return items[rank::world], rounds


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for a measurement inside training; the module's mode is restored."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)
