"""Typed model section of a recipe: where the VLM comes from, and each stage's per-component freezing."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

COMPONENTS = ("vision_tower", "projector", "language_model")

# Linear layers LoRA wraps when a schedule names no targets. Both lists hold the names transformers gives
# the attention/MLP projections of the common families (SigLIP/CLIP towers; Llama/Qwen2/Mistral LMs).
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "vision_tower": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "language_model": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}

# Which components may use which modes (projectors are a few MB: LoRA on them saves nothing; only a
# tower has the "last k encoder layers" structure).
ALLOWED_MODES: dict[str, tuple[str, ...]] = {
    "vision_tower": ("frozen", "full", "lora", "last_k"),
    "projector": ("frozen", "full"),
    "language_model": ("frozen", "full", "lora"),
}

_LORA_FIELDS = ("r", "alpha", "dropout", "targets")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentSchedule(Strict):
    """How one component trains in a stage: frozen, fully, through LoRA adapters, or its last k layers."""

    mode: Literal["frozen", "full", "lora", "last_k"] = "frozen"
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # None: DEFAULT_LORA_TARGETS for the component (module-name suffixes, as peft matches them).
    targets: list[str] | None = Field(None, min_length=1)
    k: int | None = Field(None, ge=1)
    # None: the optimizer's base learning rate.
    lr: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _fields_fit_mode(self) -> ComponentSchedule:
        if self.mode == "last_k" and self.k is None:
            raise ValueError("mode last_k needs k (how many final encoder layers train)")
        if self.mode != "last_k" and self.k is not None:
            raise ValueError(f"k only applies to mode last_k, not {self.mode}")
        stray = [f for f in _LORA_FIELDS if f in self.model_fields_set]
        if self.mode != "lora" and stray:
            raise ValueError(f"{', '.join(stray)} only apply to mode lora, not {self.mode}")
        if self.mode == "frozen" and self.lr is not None:
            raise ValueError("lr given for a frozen component")
        return self

    @property
    def trains(self) -> bool:
        return self.mode != "frozen"


class FreezeSchedule(Strict):
    """One stage's schedule. Defaults are VILA stage 1 (align): only the projector trains."""

    vision_tower: ComponentSchedule = ComponentSchedule(mode="frozen")
    projector: ComponentSchedule = ComponentSchedule(mode="full")
    language_model: ComponentSchedule = ComponentSchedule(mode="frozen")

    @model_validator(mode="after")
    def _modes_fit_components(self) -> FreezeSchedule:
        for name in COMPONENTS:
            mode = getattr(self, name).mode
            if mode not in ALLOWED_MODES[name]:
                raise ValueError(
                    f"{name}: mode {mode} is not allowed; use one of {list(ALLOWED_MODES[name])}"
                )
        if not any(getattr(self, name).trains for name in COMPONENTS):
            raise ValueError("every component is frozen: nothing would train")
        return self

    def component(self, name: str) -> ComponentSchedule:
        return getattr(self, name)

    def lora_targets(self, name: str) -> list[str]:
        return list(self.component(name).targets or DEFAULT_LORA_TARGETS[name])


class ComponentSource(Strict):
    """A vision tower or LLM: a pretrained directory / hub id, or an inline transformers config
    (`model_type` plus fields, randomly initialised: used for meta-device dry runs and tests)."""

    path: str | None = None
    config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ComponentSource:
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of path or config")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("an inline config needs model_type (e.g. siglip_vision_model, qwen2)")
        return self


class ModelSpec(Strict):
    """Where the VLM comes from: a saved VLM directory (tiny assets, or a previous stage's export), or a
    vision tower + LLM + a freshly initialised projector."""

    path: str | None = None
    vision: ComponentSource | None = None
    llm: ComponentSource | None = None
    # With vision + llm: required. With path: None keeps the saved projector; another name keeps the
    # saved tower and LLM and starts a fresh projector of that kind.
    projector: str | None = None
    # A trained projector (safetensors file, or a directory with model.safetensors), e.g. a stage-1
    # projector reused with another LLM; its shapes must fit the tower's and the LLM's widths.
    projector_weights: str | None = None
    # Default: the saved directory, else the LLM's path. `<image>` is added if the tokenizer lacks it.
    tokenizer: str | None = None
    # Which tower hidden state feeds the projector (LLaVA-1.5 / VILA take the penultimate, -2). None: the
    # saved directory's value, or -2 for a fresh build.
    vision_feature_layer: int | None = None
    image_token: str = "<image>"
    # None: `packed_sdpa` for the LLM (SDPA per packed document, vilaray.model.packed_attention) and
    # transformers' default (sdpa) for the tower; e.g. flash_attention_2 or flex_attention on GPUs.
    attn_implementation: str | None = None

    @field_validator("projector")
    @classmethod
    def _known_projector(cls, value: str | None) -> str | None:
        from vilaray.model.projectors import PROJECTORS

        if value is not None:
            PROJECTORS.get(value)  # raises naming the choices
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> ModelSpec:
        parts = self.vision is not None or self.llm is not None
        if self.path is not None and parts:
            raise ValueError("give either path (a saved VLM) or vision + llm, not both")
        if self.path is None:
            if self.vision is None or self.llm is None:
                raise ValueError("give path (a saved VLM directory), or vision + llm + projector")
            if self.projector is None:
                raise ValueError("a VLM assembled from vision + llm needs a projector name")
        return self

    @property
    def tokenizer_dir(self) -> str:
        """The tokenizer's directory: `tokenizer`, else the saved VLM's, else the LLM's."""
        found = self.tokenizer or self.path or self.llm.path
        if found is None:
            raise ValueError("an inline LLM config needs model.tokenizer")
        return found
