"""The training VLM: vision tower -> projector -> features scattered into a causal LM's image placeholders."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vilaray.model.geometry import ImageGeometry
from vilaray.model.inputs import loss_positions, pixels_to_model, selected_token_losses, shifted_token_losses
from vilaray.model.packed_attention import PACKED_SDPA, packed_kwargs
from vilaray.model.projectors import Projector

# Tower children after the encoder (SigLIP/CLIP post-layernorm, SigLIP's pooling head): the projector's
# input, hidden_states[layer], never passes through them, so they can get no gradient and never train.
POST_ENCODER_MODULES = ("post_layernorm", "head")

# Tokens a tower emits before its patch grid; towers not listed are measured with one dummy image.
PREFIX_TOKENS = {"siglip_vision_model": 0, "clip_vision_model": 1}


class ImageTokenMismatch(ValueError):
    """The batch's image placeholder tokens do not match its images x tokens per image."""


@dataclass
class VLMOutput:
    # [B, T, V]; None when labels were given (the loss then needs only the loss positions' logits).
    logits: torch.Tensor | None
    # [B, T-1] next-token loss per position (0 where the target is -100); only when labels are given.
    token_losses: torch.Tensor | None = None


@functools.cache
def keeps_logits_by_mask(lm_class: type) -> bool:
    """Whether the causal LM's forward takes a boolean [B, T] `logits_to_keep` (transformers'
    `slice_logits_to_keep`, which flattens the kept positions to [N, V] before the LM head)."""
    from transformers import modeling_utils

    takes = "logits_to_keep" in inspect.signature(lm_class.forward).parameters
    return takes and hasattr(modeling_utils, "slice_logits_to_keep")


def select_patch_features(hidden: torch.Tensor, grid: int) -> torch.Tensor:
    """Drop the tokens a tower puts before its patch grid (CLIP's CLS), keeping all grid*grid patches."""
    extra = hidden.shape[1] - grid * grid
    if extra < 0:
        raise ValueError(
            f"vision tower returned {hidden.shape[1]} tokens, fewer than its {grid}x{grid} patch grid"
        )
    return hidden[:, extra:]


def encoder_layers(tower: nn.Module) -> tuple[str, nn.ModuleList]:
    """The tower's stack of encoder layers: the longest ModuleList named `layers`/`layer`."""
    found = [
        (name, m)
        for name, m in tower.named_modules()
        if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "layer")
    ]
    if not found:
        raise ValueError(f"{type(tower).__name__}: no encoder layer list (a ModuleList named layers/layer)")
    return max(found, key=lambda item: len(item[1]))


def prefix_tokens(tower: nn.Module, grid: int) -> int:
    """How many non-patch tokens (CLS, registers) precede the patch grid in the tower's output."""
    known = PREFIX_TOKENS.get(tower.config.model_type)
    if known is not None:
        return known
    size = tower.config.image_size
    param = next(tower.parameters())
    with torch.no_grad():
        out = tower(pixel_values=torch.zeros(1, 3, size, size, dtype=param.dtype, device=param.device))
    return out.last_hidden_state.shape[1] - grid * grid


def tower_features(tower: nn.Module, pixels: torch.Tensor, layer: int, grid: int) -> torch.Tensor:
    """Patch features [N, grid*grid, D] from hidden state `layer`, as LLaVA's `vision_feature_layer` picks them.

    hidden_states[-1] is the last encoder layer's output *before* SigLIP's post-layernorm, which is what
    LLaVA (and so every exported checkpoint) feeds its projector.
    """
    out = tower(pixel_values=pixels, output_hidden_states=True, return_dict=True)
    return select_patch_features(out.hidden_states[layer], grid)


def scatter_image_features(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    feats: torch.Tensor,
    image_token_id: int,
    image_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write `feats` [N, tokens, D] into the placeholder positions of `embeds` [B, T, D], row-major, so
    image i of the batch (collate order) fills the i-th run of placeholders."""
    mask = input_ids == image_token_id
    per_image = feats.shape[1]
    n_tokens, n_feats = int(mask.sum()), feats.shape[0] * per_image
    if n_tokens != n_feats:
        raise ImageTokenMismatch(
            f"{n_tokens} image placeholder tokens (id {image_token_id}) in the batch, but {feats.shape[0]} "
            f"images x {per_image} tokens per image = {n_feats}: the data was tokenized for another "
            "projector/resolution, or images and placeholders were separated"
        )
    if image_counts is not None:
        per_row = mask.sum(dim=1)
        expected = image_counts.to(per_row.device) * per_image
        bad = (per_row != expected).nonzero().flatten().tolist()
        if bad:
            b = bad[0]
            raise ImageTokenMismatch(
                f"row {b} has {int(per_row[b])} image placeholder tokens but image_counts says "
                f"{int(image_counts[b])} images x {per_image} = {int(expected[b])} (rows off: {bad})"
            )
    return embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.dtype))


class VisionLanguageModel(nn.Module):
    """vision_tower (any transformers vision model) + projector (registry) + language_model (any causal LM).

    `forward` takes the collated batch as is: uint8 images [N, H, W, 3] are normalised here, on the
    device, with the tower's mean/std.
    """

    def __init__(
        self,
        vision_tower: nn.Module,
        projector: Projector,
        language_model: nn.Module,
        *,
        image_token_id: int,
        feature_layer: int,
        image_processor: Any,
    ):
        super().__init__()
        self.vision_tower = vision_tower
        self.projector = projector
        self.language_model = language_model
        self.image_token_id = int(image_token_id)
        self.feature_layer = int(feature_layer)
        # The transformers image processor that pairs with the tower: its mean/std normalise the pixels
        # here, and export saves it (inside the LlavaProcessor) for inference.
        self.image_processor = image_processor
        vc = vision_tower.config
        self.image_size, self.patch_size = int(vc.image_size), int(vc.patch_size)

    @property
    def projector_name(self) -> str:
        return self.projector.name

    @property
    def geometry(self) -> ImageGeometry:
        return ImageGeometry(self.image_size, self.patch_size, self.projector_name)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        return self.projector.num_tokens(self.grid)

    @property
    def image_mean(self) -> list[float]:
        return list(self.image_processor.image_mean)

    @property
    def image_std(self) -> list[float]:
        return list(self.image_processor.image_std)

    @property
    def packed_attention(self) -> bool:
        return self.language_model.config._attn_implementation == PACKED_SDPA

    def used_encoder_layers(self) -> int:
        """How many encoder layers feed the projector (hidden_states[0] is the embeddings' output)."""
        n = len(encoder_layers(self.vision_tower)[1])
        return self.feature_layer % (n + 1)

    def unused_vision_modules(self) -> list[str]:
        """Tower submodules (names relative to the tower) the projector's input never passes through."""
        name, layers = encoder_layers(self.vision_tower)
        tail = [f"{name}.{i}" for i in range(self.used_encoder_layers(), len(layers))]
        children = dict(self.vision_tower.named_children())
        return tail + [c for c in POST_ENCODER_MODULES if children.get(c) is not None]

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [N, 3, H, W] -> projected features [N, tokens_per_image, text_hidden]."""
        return self.projector(tower_features(self.vision_tower, pixels, self.feature_layer, self.grid))

    def to_model_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] (the collated form) -> normalised [N, 3, H, W]; float input is taken as
        already normalised (what an HF processor returns)."""
        dtype = self.vision_tower.dtype
        if pixel_values.dtype == torch.uint8:
            return pixels_to_model(pixel_values, self.image_mean, self.image_std, dtype)
        return pixel_values.to(dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        run_vision_always: bool = True,
    ) -> VLMOutput:
        embeds = self.language_model.get_input_embeddings()(input_ids)
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if n_images:
            feats = self.encode_images(self.to_model_pixels(pixel_values))
            embeds = scatter_image_features(embeds, input_ids, feats, self.image_token_id, image_counts)
        else:
            if int((input_ids == self.image_token_id).sum()):
                raise ImageTokenMismatch("the batch has image placeholder tokens but no images")
            if run_vision_always:
                # ZeRO-3 gathers each module's parameters as it runs, collectively: a rank that skipped
                # the tower would leave the others waiting forever. A zero-weighted dummy image keeps
                # every rank's module sequence (and gradient graph) identical.
                dummy = torch.zeros(
                    1,
                    3,
                    self.image_size,
                    self.image_size,
                    dtype=self.vision_tower.dtype,
                    device=embeds.device,
                )
                embeds = embeds + 0.0 * self.encode_images(dummy).sum().to(embeds.dtype)
        # attention_mask=None + no cache: each packed document attends only to itself. `packed_sdpa` gets the
        # documents' bounds; other implementations derive a block-diagonal mask from the restarting
        # position ids (flash-attention's varlen path does the same from them).
        kwargs = packed_kwargs(position_ids) if self.packed_attention else {}
        keep = None
        if labels is not None and keeps_logits_by_mask(type(self.language_model)):
            # The LM head and the loss run on the loss-bearing positions only (a quarter of a packed
            # row's tokens here: images, prompts and padding carry none); with a 150k vocabulary the full
            # [B, T, V] logits would be the step's largest activation.
            keep = kwargs["logits_to_keep"] = loss_positions(labels)
        out = self.language_model(
            inputs_embeds=embeds, position_ids=position_ids, attention_mask=None, use_cache=False, **kwargs
        )
        if labels is None:
            return VLMOutput(logits=out.logits)
        if keep is None:
            return VLMOutput(logits=None, token_losses=shifted_token_losses(out.logits, labels))
        return VLMOutput(logits=None, token_losses=selected_token_losses(out.logits, labels, keep))

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing in the tower and the LM (non-reentrant, so frozen inputs still work)."""
        for part in (self.vision_tower, self.language_model):
            part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
