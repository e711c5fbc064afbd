"""Model FLOPs of a training step, for MFU: one formula shared by the training metrics and `benchmark.py train`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Dense bf16 peak of one H100 SXM (the MFU denominator the reference figures use).
H100_BF16_TFLOPS = 989.0

FORMULA = (
    "MFU = step FLOPs / step time / peak (989 TFLOP/s: H100 dense bf16), where step FLOPs =\n"
    "  6 * N_trainable * T          (forward + backward + weight gradients of parameters that train)\n"
    "+ 4 * N_frozen_with_grad_flow * T  (frozen weights gradients must pass through: forward + input grads)\n"
    "+ 2 * N_vit * P                (a frozen vision tower nothing trains below: forward only)\n"
    "+ 6 * L * d * sum(len^2)        (causal attention of the LM, fwd + bwd, per document of a packed row)\n"
    "with T = tokens through the component (LM: every row token; projector: image tokens), P = patch tokens\n"
    "through the tower, L, d = the LM's layers and width, len = each document's length in its row."
)

# Components in the order activations flow; gradients flow back through a frozen component whenever
# something at or before it trains.
ORDER = ("vision_tower", "projector", "language_model")


@dataclass(frozen=True)
class FlopModel:
    """Per-component FLOPs per token, read from the model's parameters and their requires_grad."""

    per_token: dict[str, float]  # component -> FLOPs per token passing through it
    layers: int
    hidden: int
    tokens_per_image: int  # LM tokens (projector outputs) per image
    patches_per_image: int  # tower tokens per image

    @classmethod
    def of(cls, model: torch.nn.Module) -> FlopModel:
        per_token, upstream_trains = {}, False
        for name in ORDER:
            params = list(getattr(model, name).parameters())
            trainable = sum(p.numel() for p in params if p.requires_grad)
            frozen = sum(p.numel() for p in params) - trainable
            upstream_trains = upstream_trains or trainable > 0
            per_token[name] = 6.0 * trainable + (4.0 if upstream_trains else 2.0) * frozen
        text = model.language_model.config
        return cls(
            per_token,
            int(text.num_hidden_layers),
            int(text.hidden_size),
            model.tokens_per_image,
            model.grid**2,
        )

    def step_flops(self, tokens: int, image_tokens: int, patches: int, sum_len_sq: int) -> float:
        return (
            self.per_token["language_model"] * tokens
            + self.per_token["projector"] * image_tokens
            + self.per_token["vision_tower"] * patches
            + 6.0 * self.layers * self.hidden * sum_len_sq
        )

    def batch_flops(self, batch: dict) -> float:
        """FLOPs of one collated (micro-)batch: every slot of its rows, its images, its documents."""
        images = int(batch["image_counts"].sum())
        return self.step_flops(
            batch["input_ids"].numel(),
            images * self.tokens_per_image,
            images * self.patches_per_image,
            sum_doc_len_sq(batch["position_ids"]),
        )


def peak_tflops(configured: float | None, device: torch.device) -> float | None:
    """The MFU denominator: as configured, else an H100's on GPU; None (no MFU) on CPU."""
    if configured is not None:
        return configured
    return H100_BF16_TFLOPS if device.type == "cuda" else None


def sum_doc_len_sq(position_ids: torch.Tensor) -> int:
    """Sum over rows of sum(len^2) of the documents in each row (position ids restart at 0 per document)."""
    total = 0
    for row in position_ids.cpu():
        starts = torch.nonzero(row == 0).flatten().tolist() + [row.numel()]
        total += sum((b - a) ** 2 for a, b in zip(starts, starts[1:]))
    return total
