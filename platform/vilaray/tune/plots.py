"""A sweep's results.png, drawn with Pillow like the eval chart (no plotting stack): the objective against
each mix weight, or in grid mode each cell's harness scores at 0 and k shots (VILA's layout as bars)."""

from __future__ import annotations

from pathlib import Path

from vilaray.tune.space import HARNESS_SCORE

GREY = (150, 150, 150)
SHOT_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189))


def plot_mixtures(path: Path, rows: list, metric: str) -> None:
    """The objective against each mix weight, a panel per stage:source (proposed mixtures as squares)."""
    from PIL import Image, ImageDraw

    done = [r for r in rows if r.finished]
    panels = sorted(
        {
            (k.split("/", 1)[1], s)
            for r in done
            for k, v in r.config.items()
            if k.startswith("mix/")
            for s in v
        }
    )
    size, pad = 220, 36
    img = Image.new("RGB", (max(1, len(panels)) * (size + pad) + pad, size + 2 * pad + 14), "white")
    draw = ImageDraw.Draw(img)
    values = [r.objective for r in done]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    span = (hi - lo) or 1.0
    draw.text(
        (pad, 6), f"{metric} (y, {lo:.4g} .. {hi:.4g}) against each mix weight (x, 0 .. 1)", fill="black"
    )
    if not panels:
        draw.text((pad, pad + 20), "no finished trials with a mixture yet", fill="black")
    for n, (stage, source) in enumerate(panels):
        x0, y0 = pad + n * (size + pad), pad
        draw.rectangle([x0, y0, x0 + size, y0 + size], outline="black")
        draw.text((x0, y0 + size + 4), f"{stage}: {source}", fill="black")
        for r in done:
            w = r.config.get(f"mix/{stage}", {}).get(source)
            if w is None:
                continue
            x, y = x0 + w * size, y0 + size - (r.objective - lo) / span * size
            color = (214, 39, 40) if r.proposed else (31, 119, 180)
            box = [x - 3, y - 3, x + 3, y + 3]
            (draw.rectangle if r.proposed else draw.ellipse)(box, fill=color)
    img.save(path)


def plot_cells(path: Path, cells: list[dict]) -> None:
    """Grid mode: a panel per harness task (its own scale), in it a group of bars per cell, one bar per shot
    count (mean over seeds, a whisker of ± its standard error) and a grey tick at the shuffled-image
    control's 0-shot mean: 0-shot vs k-shot and grounding per setting, seeds' spread visible."""
    from PIL import Image, ImageDraw

    found: dict[str, dict[int, str]] = {}
    controls: dict[str, str] = {}
    for name in sorted({n for c in cells for n in c["scores"]}):
        if (m := HARNESS_SCORE.match(name)) is None:
            continue
        if m["control"]:
            if m["shots"] == "0":
                controls[m["task"]] = name
        else:
            found.setdefault(m["task"], {})[int(m["shots"])] = name
    tasks = sorted(found)
    shots = sorted({k for t in tasks for k in found[t]})
    bar, gap, pad, height = 10, 14, 40, 220
    group = bar * len(shots) + gap
    width = max(1, len(cells)) * group + gap
    img = Image.new(
        "RGB", (pad + max(1, len(tasks)) * (width + pad), height + 2 * pad + 16 * len(cells)), "white"
    )
    draw = ImageDraw.Draw(img)
    legend = ", ".join(f"{k}-shot" for k in shots)
    draw.text((pad, 6), f"harness scores per cell: bars {legend} (mean ± SE over seeds); grey: shuffled images",
              fill="black")  # fmt: skip
    if not tasks:
        draw.text((pad, pad + 20), "no finished trials with harness scores yet", fill="black")
    for n, task in enumerate(tasks):
        x0, y0 = pad + n * (width + pad), pad
        names = [*found[task].values(), *([controls[task]] if task in controls else [])]
        top = max((c["scores"][s]["mean"] + _se(c["scores"][s]) for c in cells for s in names if s in c["scores"]),
                  default=1.0) or 1.0  # fmt: skip
        draw.rectangle([x0, y0, x0 + width, y0 + height], outline="black")
        draw.text((x0, y0 - 14), f"{task} (0 .. {top:.3g})", fill="black")

        def y(v: float, top: float = top) -> float:
            return pad + height - v / top * height

        for i, c in enumerate(cells):
            gx = x0 + gap + i * group
            for j, k in enumerate(shots):
                score = c["scores"].get(found[task].get(k, ""))
                if score is None:
                    continue
                left = gx + j * bar
                draw.rectangle([left, y(score["mean"]), left + bar - 2, y0 + height], fill=SHOT_COLORS[j % 4])
                mid, err = left + bar // 2 - 1, _se(score)
                draw.line([mid, y(score["mean"] - err), mid, y(score["mean"] + err)], fill="black")
            if (ctl := c["scores"].get(controls.get(task, ""))) is not None:
                draw.line([gx - 2, y(ctl["mean"]), gx + bar * len(shots), y(ctl["mean"])], fill=GREY, width=2)
            draw.text((gx, y0 + height + 4), f"{i + 1}", fill="black")
    for i, c in enumerate(cells):
        label = c["cell"].get("cell", "(recipe)")
        draw.text((pad, height + pad + 24 + 16 * i), f"{i + 1}: {label} ({c['seeds']} seeds)", fill="black")
    img.save(path)


def _se(score: dict) -> float:
    """A score's standard error over seeds; NaN (one seed) draws no whisker."""
    err = score.get("stderr", 0.0)
    return 0.0 if err != err else err
