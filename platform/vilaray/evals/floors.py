"""The shapes world's acceptance floors after the three stages: VQA over the blind guess, CIDEr over the
most frequent caption, text-only accuracy kept through SFT (the demo prints them, a test asserts them)."""

from __future__ import annotations

from dataclasses import dataclass

from vilaray.evals.harness import ModelResult


@dataclass(frozen=True)
class Floor:
    name: str
    value: float
    floor: float
    strict: bool = False  # above the floor, not merely at it

    @property
    def ok(self) -> bool:
        return self.value > self.floor if self.strict else self.value >= self.floor

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.value:.3f} vs floor {self.floor:.3f}"


def shapes_floors(
    baseline: ModelResult, pretrain: ModelResult, sft: ModelResult, shots: int = 0
) -> list[Floor]:
    col = f"/{shots}-shot"

    def v(r: ModelResult, task: str) -> float:
        return r.scores[task + col].value

    return [
        Floor(
            f"VQA accuracy{col} >= majority answer + 0.25",
            v(sft, "shapes_vqa"),
            v(baseline, "shapes_vqa") + 0.25,
        ),
        Floor(
            f"CIDEr-D{col} >= 2 x most frequent caption",
            v(sft, "shapes_captions"),
            2 * v(baseline, "shapes_captions"),
        ),
        Floor(
            f"text-only accuracy{col} after SFT > after pretraining",
            v(sft, "shapes_text_mc"),
            v(pretrain, "shapes_text_mc"),
            strict=True,
        ),
    ]
