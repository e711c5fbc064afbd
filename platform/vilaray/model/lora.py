"""peft LoRA injected into one named component only, and folded back into plain weights for export."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from vilaray.model.spec import ComponentSchedule

ADAPTER = "default"


def lora_layers(module: nn.Module) -> dict[str, LoraLayer]:
    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


def resolve_targets(
    component: nn.Module, name: str, targets: list[str], skip: Iterable[str] = ()
) -> list[str]:
    """Full module names (relative to `component`) of the linear layers whose name ends with a target,
    outside the `skip` prefixes (tower modules the features never pass through)."""
    skip = tuple(skip)
    found = []
    for mod_name, mod in component.named_modules():
        if not isinstance(mod, nn.Linear) or any(mod_name == s or mod_name.startswith(s + ".") for s in skip):
            continue
        if any(mod_name == t or mod_name.endswith("." + t) for t in targets):
            found.append(mod_name)
    if not found:
        raise ValueError(
            f"{name}: LoRA targets {targets} match no linear layer in {type(component).__name__}"
        )
    return found


def inject_lora(
    component: nn.Module, name: str, sched: ComponentSchedule, targets: list[str], skip: Iterable[str] = ()
) -> int:
    """Wrap the matching linear layers of `component` (and nothing outside it) with LoRA adapters.

    peft gets the component itself, never the whole VLM, and exact module names, so a target such as
    `q_proj` cannot silently land in the vision tower too. Returns the number of wrapped layers.
    """
    if lora_layers(component):
        raise ValueError(
            f"{name} already carries LoRA adapters; export (merge) before re-applying a schedule"
        )
    names = resolve_targets(component, name, targets, skip)
    config = LoraConfig(r=sched.r, lora_alpha=sched.alpha, lora_dropout=sched.dropout, target_modules=names)
    inject_adapter_in_model(config, component, adapter_name=ADAPTER)
    return len(names)


def is_lora_param(name: str) -> bool:
    return ".lora_" in name or name.startswith("lora_")


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every LoRA delta added to its base weight and the peft wrapping removed
    (`x.base_layer.weight` -> `x.weight`, adapter tensors dropped). The model itself is left untouched,
    so training can go on after an export."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if is_lora_param(key):
            continue
        out[key.replace(".base_layer.", ".")] = value
    for prefix, layer in lora_layers(model).items():
        if layer.merged:  # already folded in place: the base weight holds the delta
            continue
        weight_key = f"{prefix}.weight"
        base = out[weight_key]
        delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
        out[weight_key] = (base.float() + delta.float()).to(base.dtype) if torch.is_tensor(delta) else base
    return out
