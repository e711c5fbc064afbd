"""Evaluation reports: a VILA-Table-1-style Markdown/JSON table, a bar chart PNG, predictions and prompts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from vilaray.evals.harness import ModelResult

# CIDEr is printed x100 as papers do; accuracies as percentages.
SCALE = {"cider_d": 100.0}


def columns(results: list[ModelResult]) -> list[str]:
    seen: dict[str, None] = {}
    for r in results:
        seen |= dict.fromkeys(r.scores)
    return list(seen)


def markdown_table(results: list[ModelResult], metrics: dict[str, str]) -> str:
    """One row per model, a column per task x shots: value ± bootstrap standard error."""
    cols = columns(results)
    head = "| model | " + " | ".join(f"{c} ({metrics[c.split('/')[0]]})" for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for r in results:
        cells = []
        for c in cols:
            s = r.scores.get(c)
            k = SCALE.get(metrics[c.split("/")[0]], 100.0)
            cells.append("-" if s is None else f"{s.value * k:.1f} ± {s.stderr * k:.1f}")
        lines.append(f"| {r.model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(results: list[ModelResult], metrics: dict[str, str], path: Path) -> None:
    """Grouped bars (a group per task x shots, a bar per model), drawn with Pillow: no plotting stack."""
    from PIL import Image, ImageDraw

    cols = columns(results)
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    bar, gap, height, top, bottom, left = 14, 18, 260, 30, 70, 40
    width = left + len(cols) * (len(results) * bar + gap) + 220
    img = Image.new("RGB", (width, top + height + bottom), "white")
    draw = ImageDraw.Draw(img)
    peak = max(
        (s.value * SCALE.get(metrics[c.split("/")[0]], 100.0) for r in results for c, s in r.scores.items()),
        default=1.0,
    )
    peak = max(peak, 1e-9)
    draw.line([(left, top), (left, top + height), (width - 220, top + height)], fill="black")
    x = left + gap // 2
    for c in cols:
        for i, r in enumerate(results):
            s = r.scores.get(c)
            if s is not None:
                h = int(height * s.value * SCALE.get(metrics[c.split("/")[0]], 100.0) / peak)
                draw.rectangle(
                    [x + i * bar, top + height - h, x + (i + 1) * bar - 2, top + height],
                    fill=colors[i % len(colors)],
                )
        draw.text((x, top + height + 6 + (cols.index(c) % 2) * 14), c, fill="black")
        x += len(results) * bar + gap
    for i, r in enumerate(results):
        y = top + i * 16
        draw.rectangle([width - 210, y, width - 198, y + 10], fill=colors[i % len(colors)])
        draw.text((width - 192, y - 1), r.model[-30:], fill="black")
    draw.text((left, 8), f"scores (accuracy %, CIDEr x100); tallest bar = {peak:.1f}", fill="black")
    img.save(path)


def write_report(
    out_dir: Path, results: list[ModelResult], metrics: dict[str, str], prompts: dict, meta: dict
) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results, metrics)
    (out_dir / "results.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "metrics": metrics,
                "results": [
                    {"model": r.model, "scores": {k: asdict(v) for k, v in r.scores.items()}} for r in results
                ],
            },
            indent=2,
        )
    )
    with (out_dir / "predictions.jsonl").open("w") as f:
        for r in results:
            for p in r.predictions:
                f.write(json.dumps(p, ensure_ascii=False) + "\n")
    (out_dir / "prompts.json").write_text(json.dumps(prompts, indent=2))
    bar_chart(results, metrics, out_dir / "results.png")
    return table
