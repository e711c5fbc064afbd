"""Pretrains the tiny vision tower on rendered train-split scenes: what is where, in its patch features.

A real VLM starts from a pretrained tower (SigLIP, CLIP) whose patch features already say what is in
them; VILA's stages only align and use them. A randomly initialised tower gives features dominated by
the plain background, and the tiny LM never learns to read the few patches a shape covers within the
demo's step budget (a model trained that way answers from question priors: its loss is the same with
the right image or a shuffled one). So the tiny assets get a pretrained tower too: a linear readout of
its last hidden state (every patch, flattened) is trained to name, for each of the five positions, the
shape's kind, colour and size, or "none". Scenes are drawn from the train split only, so no held-out
eval scene is ever seen.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vilaray.synth.render import render_icon
from vilaray.synth.scenes import COLORS, KINDS, POSITIONS, SIZES, Scene, item_rng, sample_scene

# Per position, each attribute's classes; index 0 is "no shape here".
ATTRIBUTES: dict[str, tuple[str, ...]] = {"kind": KINDS, "color": COLORS, "size": SIZES}


@dataclass(frozen=True)
class TowerPretraining:
    steps: int = 400
    batch: int = 64
    scenes: int = 4096
    lr: float = 2e-3
    seed: int = 0


def scene_targets(scene: Scene) -> list[int]:
    """One class index per (position, attribute), 0 where the position is empty."""
    at = {s.position: s for s in scene.shapes}
    return [
        (values.index(getattr(at[p], attr)) + 1) if p in at else 0
        for p in POSITIONS
        for attr, values in ATTRIBUTES.items()
    ]


def render_scenes(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` train-split scenes as normalised pixels [n, 3, size, size] (mean/std 0.5) and their targets."""
    pixels, targets = [], []
    for i in range(n):
        rng = item_rng(seed, "tower", i)
        scene = sample_scene(rng, split="train")
        img = Image.open(io.BytesIO(render_icon(scene, size, rng))).convert("RGB")
        pixels.append(np.asarray(img, dtype=np.float32))
        targets.append(scene_targets(scene))
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x, torch.tensor(targets)


class Readout(torch.nn.Module):
    """Flattened patch features -> logits for every (position, attribute)."""

    def __init__(self, patches: int, hidden: int):
        super().__init__()
        self.sizes = [len(v) + 1 for _ in POSITIONS for v in ATTRIBUTES.values()]
        self.linear = torch.nn.Linear(patches * hidden, sum(self.sizes))

    def loss_and_accuracy(self, features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, float]:
        logits = self.linear(features.flatten(1)).split(self.sizes, dim=1)
        loss = sum(torch.nn.functional.cross_entropy(lg, targets[:, j]) for j, lg in enumerate(logits))
        hits = torch.stack([lg.argmax(1) == targets[:, j] for j, lg in enumerate(logits)], dim=1)
        return loss / len(logits), float(hits.float().mean())


def _features(tower: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    # hidden_states[-1]: the last layer before the post-layernorm, what the LLaVA export feeds its projector.
    return tower(pixel_values=x, output_hidden_states=True).hidden_states[-1]


def pretrain_tower(tower: torch.nn.Module, cfg: TowerPretraining = TowerPretraining()) -> dict[str, float]:
    """Train `tower` in place; returns the readout's per-attribute accuracy on held-back scenes."""
    size = int(tower.config.image_size)
    torch.manual_seed(cfg.seed)
    x, y = render_scenes(cfg.scenes, size, cfg.seed)
    held = cfg.scenes // 8
    x_val, y_val, x, y = x[:held], y[:held], x[held:], y[held:]
    patches = (size // int(tower.config.patch_size)) ** 2
    head = Readout(patches, int(tower.config.hidden_size))
    params = [*tower.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    tower.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.steps):
        idx = torch.randint(0, len(x), (cfg.batch,), generator=gen)
        loss, _ = head.loss_and_accuracy(_features(tower, x[idx]), y[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    tower.eval()
    with torch.no_grad():
        val_loss, val_acc = head.loss_and_accuracy(_features(tower, x_val), y_val)
    return {"readout_accuracy": val_acc, "readout_loss": float(val_loss), "steps": cfg.steps}


# Trained towers by (settings, initial weights): pretraining reads no world, so a process that builds assets
# for several worlds (the test session builds two) trains each distinct tower once.
_TRAINED: dict[str, tuple[dict[str, torch.Tensor], dict[str, float], torch.Tensor]] = {}


def _tower_key(tower: torch.nn.Module, cfg: TowerPretraining) -> str:
    h = hashlib.sha256(repr(cfg).encode())
    for name, tensor in sorted(tower.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def pretrain_tower_once(
    tower: torch.nn.Module, cfg: TowerPretraining = TowerPretraining()
) -> dict[str, float]:
    """`pretrain_tower`, computed once per process for the same settings and initial weights: a repeat gets
    the trained weights, the stats and the global RNG state that training left, as if it had run again."""
    key = _tower_key(tower, cfg)
    if key not in _TRAINED:
        stats = pretrain_tower(tower, cfg)
        state = {k: v.detach().clone() for k, v in tower.state_dict().items()}
        _TRAINED[key] = (state, stats, torch.get_rng_state())
        return dict(stats)
    state, stats, rng = _TRAINED[key]
    tower.load_state_dict(state)
    tower.eval()
    torch.set_rng_state(rng)
    return dict(stats)
