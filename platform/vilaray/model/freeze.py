"""Apply a stage's per-component freezing schedule, report what trains, and build optimizer param groups."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from vilaray.model.lora import inject_lora, is_lora_param, lora_layers
from vilaray.model.spec import COMPONENTS, ComponentSchedule, FreezeSchedule
from vilaray.model.vlm import VisionLanguageModel, encoder_layers
from vilaray.registry import Registry

log = logging.getLogger(__name__)

# mode -> function(model, component name, its schedule, the whole schedule) -> short description.
# Each runs after the component's parameters were all set to requires_grad=False.
Mode = Callable[[VisionLanguageModel, str, ComponentSchedule, FreezeSchedule], str]
MODES: Registry[Mode] = Registry("freeze mode")


def _unused(model: VisionLanguageModel, component: str) -> tuple[str, ...]:
    # Tower modules the features never reach stay frozen whatever the mode: they would get no gradient,
    # which costs optimizer memory for nothing and trips DeepSpeed's gradient bookkeeping.
    return tuple(model.unused_vision_modules()) if component == "vision_tower" else ()


def _set_trainable(module: nn.Module, skip: tuple[str, ...] = (), only_lora: bool = False) -> None:
    for name, p in module.named_parameters():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if not only_lora or is_lora_param(name):
            p.requires_grad_(True)


@MODES.register("frozen")
def _frozen(model, component, sched, schedule) -> str:
    return "frozen"


@MODES.register("full")
def _full(model, component, sched, schedule) -> str:
    _set_trainable(getattr(model, component), _unused(model, component))
    return "full"


@MODES.register("lora")
def _lora(model, component, sched, schedule) -> str:
    module = getattr(model, component)
    n = inject_lora(module, component, sched, schedule.lora_targets(component), _unused(model, component))
    _set_trainable(module, only_lora=True)
    return f"lora r={sched.r} alpha={sched.alpha:g} on {n} layers"


@MODES.register("last_k")
def _last_k(model, component, sched, schedule) -> str:
    tower = getattr(model, component)
    name, layers = encoder_layers(tower)
    used = model.used_encoder_layers()
    if sched.k > used:
        raise ValueError(
            f"{component}: last_k k={sched.k} but only {used} encoder layers feed the projector "
            f"(vision_feature_layer={model.feature_layer}, {len(layers)} layers)"
        )
    for i in range(used - sched.k, used):
        layers[i].requires_grad_(True)
    # post_layernorm is not trained here: the projector reads hidden_states[layer], before it.
    return f"last {sched.k} of {used} layers"


@dataclass(frozen=True)
class ComponentReport:
    component: str
    mode: str
    detail: str
    trainable: int
    total: int
    lr: float | None


def _count(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())  # unique: tied embeddings count once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def apply_schedule(model: VisionLanguageModel, schedule: FreezeSchedule) -> list[ComponentReport]:
    """Set requires_grad per component (injecting LoRA where the schedule says), log the result as a
    table and return it. Call before the optimizer / DeepSpeed engine is built."""
    rows = []
    for component in COMPONENTS:
        sched = schedule.component(component)
        module = getattr(model, component)
        if sched.mode != "lora" and lora_layers(module):
            raise ValueError(f"{component} carries LoRA adapters but the schedule says {sched.mode}")
        module.requires_grad_(False)
        detail = MODES.get(sched.mode)(model, component, sched, schedule)
        rows.append(ComponentReport(component, sched.mode, detail, *_count(module), sched.lr))
    log.info("freezing schedule:\n%s", format_table(rows))
    return rows


def freeze_table(model: VisionLanguageModel, schedule: FreezeSchedule) -> list[ComponentReport]:
    """The current trainable/total parameter counts per component (no changes made)."""
    return [
        ComponentReport(
            c, schedule.component(c).mode, "", *_count(getattr(model, c)), schedule.component(c).lr
        )
        for c in COMPONENTS
    ]


def format_table(rows: list[ComponentReport]) -> str:
    lines = [f"{'component':<16}{'mode':<8}{'trainable':>15}{'total':>15}  detail"]
    for r in rows:
        lines.append(f"{r.component:<16}{r.mode:<8}{r.trainable:>15,}{r.total:>15,}  {r.detail}")
    trainable, total = sum(r.trainable for r in rows), sum(r.total for r in rows)
    lines.append(f"{'all':<24}{trainable:>15,}{total:>15,}  {100 * trainable / max(total, 1):.2f}% trainable")
    return "\n".join(lines)


def _no_decay(name: str, p) -> bool:
    # Biases and norm scales are 1-D; decaying them toward 0 only hurts (the usual AdamW convention).
    return p.ndim < 2


def param_groups(
    model: VisionLanguageModel, schedule: FreezeSchedule, base_lr: float, weight_decay: float = 0.0
) -> list[dict]:
    """Optimizer param groups holding only trainable parameters: one per component (its own lr, else
    `base_lr`), split into decay / no-decay when `weight_decay` > 0. Each group has a `name`."""
    groups, seen = [], set()
    for component in COMPONENTS:
        lr = schedule.component(component).lr or base_lr
        buckets: dict[bool, list] = {False: [], True: []}
        for name, p in getattr(model, component).named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                buckets[weight_decay > 0 and _no_decay(name, p)].append(p)
        for no_decay, params in buckets.items():
            if params:
                groups.append(
                    {
                        "name": component + ("/no_decay" if no_decay else ""),
                        "params": params,
                        "lr": lr,
                        "weight_decay": 0.0 if no_decay else weight_decay,
                    }
                )
    if not groups:
        raise ValueError("no trainable parameters: apply_schedule first, or the schedule freezes everything")
    return groups
