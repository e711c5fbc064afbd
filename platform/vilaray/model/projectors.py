"""Projector registry: map vision-tower patch features to LLM embeddings (and say how many tokens result)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from vilaray.model.geometry import IMAGE_TOKENS
from vilaray.registry import Registry

PROJECTORS: Registry[type[Projector]] = Registry("projector")


def register(name: str):
    """Register a projector under `name`; its token count is `IMAGE_TOKENS[name]` (the data side's table)."""

    def wrap(cls: type[Projector]) -> type[Projector]:
        cls.name = name
        cls.num_tokens = staticmethod(IMAGE_TOKENS.get(name))
        return PROJECTORS.add(name, cls)

    return wrap


class Projector(nn.Module):
    """Takes [n_images, grid*grid, vision_dim] patch features, returns [n_images, num_tokens, text_dim]."""

    name: str = ""
    # Input width = the tower's hidden size x this (token-merging projectors concatenate patches).
    in_multiple: int = 1

    num_tokens: Callable[[int], int]


@register("linear")
class LinearProjector(Projector):
    def __init__(self, vision_dim: int, text_dim: int):
        super().__init__()
        self.proj = nn.Linear(vision_dim, text_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(feats)


@register("mlp2x_gelu")
class MLPProjector(Projector):
    """LLaVA-1.5's projector; parameter names match `LlavaMultiModalProjector` so export is a rename-free copy."""

    def __init__(self, vision_dim: int, text_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, text_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(feats)))


@register("downsample2x2")
class Downsample2x2Projector(Projector):
    """VILA's token merge: concat each 2x2 block of patches (4x fewer tokens), LayerNorm, then an MLP.

    Odd grids are zero-padded on the right/bottom to even before merging, so a 27x27 SigLIP grid gives
    14x14 = 196 tokens.
    """

    in_multiple = 4

    def __init__(self, vision_dim: int, text_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * vision_dim)
        self.linear_1 = nn.Linear(4 * vision_dim, text_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        n, p, d = feats.shape
        grid = math.isqrt(p)
        x = feats.view(n, grid, grid, d)
        if grid % 2:
            x = nn.functional.pad(x, (0, 0, 0, 1, 0, 1))
            grid += 1
        half = grid // 2
        x = x.view(n, half, 2, half, 2, d).permute(0, 1, 3, 2, 4, 5).reshape(n, half * half, 4 * d)
        return self.linear_2(self.act(self.linear_1(self.norm(x))))
