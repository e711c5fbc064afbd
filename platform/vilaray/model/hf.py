"""transformers classes for exports whose projector LLaVA lacks; registered with the Auto* factories on import."""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)

from vilaray.model.projectors import PROJECTORS
from vilaray.model.vlm import scatter_image_features, tower_features

MODEL_TYPE = "vilaray_vlm"


def as_config(value) -> PreTrainedConfig:
    """A sub-config given as a config object or as its dict (as config.json stores it)."""
    if value is None or isinstance(value, PreTrainedConfig):
        return value
    value = dict(value)
    return AutoConfig.for_model(value.pop("model_type"), **value)


class VilarayVLMConfig(PreTrainedConfig):
    """A vision tower config + a causal-LM config + the projector's registry name."""

    model_type = MODEL_TYPE
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    # A hand-written __init__ (the remote-code style) rather than dataclass fields: the field-based config
    # machinery differs between transformers 5.17 and 5.23, this form works on both.
    def __init__(
        self,
        vision_config=None,
        text_config=None,
        projector: str = "linear",
        image_token_id: int | None = None,
        vision_feature_layer: int = -1,
        image_seq_length: int | None = None,
        tie_word_embeddings: bool | None = None,
        **kwargs,
    ):
        self.vision_config = as_config(vision_config)
        self.text_config = as_config(text_config)
        self.projector = projector
        self.image_token_id = image_token_id
        self.vision_feature_layer = vision_feature_layer
        self.image_seq_length = image_seq_length
        if tie_word_embeddings is None:
            tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class VilarayVLMForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """Same module names as the training `VisionLanguageModel` (vision_tower, projector, language_model),
    so export is a state-dict copy. Takes normalised float pixels, as an HF processor returns them."""

    config_class = VilarayVLMConfig
    config: VilarayVLMConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: VilarayVLMConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.projector = PROJECTORS.get(config.projector)(
            config.vision_config.hidden_size, config.text_config.hidden_size
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vc = self.config.vision_config
        grid = vc.image_size // vc.patch_size
        feats = tower_features(
            self.vision_tower,
            pixel_values.to(self.vision_tower.dtype),
            self.config.vision_feature_layer,
            grid,
        )
        return self.projector(feats)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            # Generation passes pixel_values only with the prompt (prefill); decoding steps have none.
            if pixel_values is not None:
                feats = self.get_image_features(pixel_values)
                inputs_embeds = scatter_image_features(
                    inputs_embeds, input_ids, feats, self.config.image_token_id
                )
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


def register() -> None:
    """Make `AutoConfig` / `AutoModelForImageTextToText.from_pretrained(dir)` resolve `vilaray_vlm`."""
    AutoConfig.register(MODEL_TYPE, VilarayVLMConfig, exist_ok=True)
    AutoModelForImageTextToText.register(VilarayVLMConfig, VilarayVLMForConditionalGeneration, exist_ok=True)


# Importing this module is what makes `vilaray_vlm` exports loadable by the Auto* factories.
register()
