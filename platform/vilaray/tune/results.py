"""A sweep's results as people read them, rewritten after every finished trial: results.json/.csv/.md, a
picture (objective against each mix weight), and best.yaml (the best trial's recipe, ready to train)."""

from __future__ import annotations

import copy
import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from vilaray.config import set_key
from vilaray.tune.space import METRIC_PREFIXES, TuneSpace, flatten, trial_overrides


@dataclass
class TrialRow:
    """One trial: what it tried, how far it got, what it scored."""

    trial_id: str
    # "completed", "stopped early by ASHA at step N", "error: ...", or not ended: "running", "pending",
    # "interrupted at step N" (the sweep was stopped with Ctrl-C; `--resume` runs the trial again)
    status: str
    config: dict  # flattened: mix/<stage>, freeze/<stage>, set/<key>, seed
    steps: int = 0  # trial_step of its last result
    objective: float | None = None
    scores: dict[str, float] = field(default_factory=dict)  # val_loss*, eval/* of its last result
    proposed: bool = False  # a mixture the regression proposed

    @property
    def ended(self) -> bool:
        return not self.status.startswith(NOT_ENDED)

    @property
    def finished(self) -> bool:
        """Ended with a result to rank: completed or stopped early, not failed."""
        return self.objective is not None and self.ended and not self.status.startswith("error")


NOT_ENDED = ("running", "pending", "interrupted")


def trial_row(trial, total_steps: int, status: str | None = None) -> TrialRow:
    """A Tune `Trial` as a row (read in the driver, from Tune's own trial objects); `status` overrides the
    trial's (Tune calls its end-of-trial hooks before it updates the status)."""
    last = dict(trial.last_result or {})
    steps = int(last.get("trial_step", 0) or 0)
    state = status or trial.status
    if state == "ERROR":
        error = (trial.get_error() or "failed") if hasattr(trial, "get_error") else "failed"
        status = f"error: {str(error).strip().splitlines()[-1][:160]}"
    elif state == "TERMINATED":
        status = "completed" if steps >= total_steps else f"stopped early by ASHA at step {steps}"
    else:
        status = state.lower()
    scores = {k: float(v) for k, v in last.items() if k.startswith(METRIC_PREFIXES)}
    objective = last.get("objective")
    return TrialRow(
        trial.trial_id,
        status,
        flatten(trial.config),
        steps,
        float(objective) if objective is not None else None,
        scores,
        bool(trial.config.get("proposed")),
    )


def ranked(rows: list[TrialRow], mode: str) -> list[TrialRow]:
    done = [r for r in rows if r.finished]
    return sorted(done, key=lambda r: r.objective if mode == "min" else -r.objective)


def _cell(value) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def columns(rows: list[TrialRow]) -> tuple[list[str], list[str]]:
    configs = sorted({k for r in rows for k in r.config if k not in ("proposed",)})
    scores = sorted({k for r in rows for k in r.scores})
    return configs, scores


def table(rows: list[TrialRow], mode: str, metric: str) -> str:
    """A Markdown table, best first (unfinished and failed trials after); bootstrap errors stay in the CSV."""
    configs, scores = columns(rows)
    scores = [k for k in scores if not k.endswith("/stderr")]
    order = ranked(rows, mode)
    order += [r for r in rows if r not in order]
    head = ["trial", "status", "steps", f"objective ({metric}, {mode})", *configs, *scores]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in order:
        name = r.trial_id + (" (proposed)" if r.proposed else "")
        cells = [name, r.status, str(r.steps), _cell(r.objective)]
        cells += [_cell(r.config.get(k)) for k in configs] + [_cell(r.scores.get(k)) for k in scores]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n)); NaN error for one value."""
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")
    return mean, se


def cells_summary(rows: list[TrialRow]) -> list[dict]:
    """Grid mode: per cell (the config without its seed) the mean ± standard error over seeds of the
    objective and of every score the cell's trials all have (a score's own bootstrap error left out)."""
    cells: dict[str, list[TrialRow]] = {}
    for r in rows:
        if r.finished:
            key = json.dumps({k: v for k, v in r.config.items() if k != "seed"}, sort_keys=True)
            cells.setdefault(key, []).append(r)
    out = []
    for key, members in cells.items():
        mean, se = mean_se([r.objective for r in members])
        shared = set.intersection(*(set(r.scores) for r in members))
        scores = {
            name: dict(zip(("mean", "stderr"), mean_se([r.scores[name] for r in members])))
            for name in sorted(shared)
            if not name.endswith("/stderr")
        }
        out.append(
            {"cell": json.loads(key), "seeds": len(members), "mean": mean, "stderr": se, "scores": scores}
        )
    return out


def _pm(mean: float, stderr: float) -> str:
    return f"{mean:.4g}" if math.isnan(stderr) else f"{mean:.4g} ± {stderr:.2g}"


def cells_table(cells: list[dict], metric: str) -> str:
    """Grid mode's table (VILA's layout): a row per cell, a column per score, mean ± SE over seeds (the
    harness's scores where trials were evaluated; in-training ones are in the trials' table)."""
    names = sorted({n for c in cells for n in c["scores"]})
    if any(n.startswith("harness/") for n in names):
        names = [n for n in names if n.startswith("harness/")]
    head = ["cell", "seeds", f"objective ({metric})", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        label = c["cell"].get("cell") or _cell({k: v for k, v in c["cell"].items()}) or "(recipe)"
        cells_ = [str(label), str(c["seeds"]), _pm(c["mean"], c["stderr"])]
        cells_ += [_pm(**c["scores"][n]) if n in c["scores"] else "" for n in names]
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def best_recipe(raw: dict, space: TuneSpace, config: dict) -> dict:
    """The sweep's recipe with the trial's overrides: what `jobs/pretrain.py --recipe best.yaml` trains."""
    out = copy.deepcopy(raw)
    for key, value in trial_overrides(space, config).items():
        set_key(out, key.split("."), copy.deepcopy(value), key)
    return out


def write_results(
    root: Path, rows: list[TrialRow], space: TuneSpace, raw: dict, fit: dict | None = None
) -> None:
    """Rewrite every results file under `root` from the rows so far."""
    mode, metric = space.objective.mode, space.objective.name
    best = ranked(rows, mode)
    summary = {
        "objective": {"metric": metric, "mode": mode},
        "trials": [asdict(r) for r in rows],
        "best": asdict(best[0]) if best else None,
        "fit": fit,
    }
    cells = cells_summary(rows) if space.mode == "grid" else []
    if space.mode == "grid":
        summary["cells"] = cells
    # Replaced whole: `--status`, dashboards and the tests read it while the sweep runs.
    tmp = root / "results.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(root / "results.json")
    configs, scores = columns(rows)
    with (root / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "status", "steps", "objective", "proposed", *configs, *scores])
        for r in rows:
            w.writerow(
                [r.trial_id, r.status, r.steps, r.objective, r.proposed]
                + [
                    json.dumps(r.config.get(k)) if isinstance(r.config.get(k), dict) else r.config.get(k)
                    for k in configs
                ]
                + [r.scores.get(k) for k in scores]
            )
    md = [f"# Sweep results ({len(rows)} trials, objective {metric}, {mode})", ""]
    if cells:
        md += [
            "## Per cell (mean ± standard error over seeds)",
            "",
            cells_table(cells, metric),
            "",
            "## Trials",
            "",
        ]
    md += [table(rows, mode, metric)]
    if fit:
        md += [
            "",
            f"Mixture fit over {fit['trials']} trials ({fit['family']} features): held-out "
            f"Spearman {fit['heldout_spearman']:.3f}; best predicted {fit['best_predicted']}.",
        ]
    (root / "results.md").write_text("\n".join(md) + "\n")
    if best:
        text = yaml.safe_dump(best_recipe(raw, space, best[0].config), sort_keys=False)
        (root / "best.yaml").write_text(
            f"# Best trial {best[0].trial_id}: {metric} {best[0].objective:.4f}\n{text}"
        )
    plot(root / "results.png", rows, metric)


def plot(path: Path, rows: list[TrialRow], metric: str) -> None:
    """The objective against each mix weight, a panel per stage:source (proposed mixtures as squares),
    drawn with Pillow like the eval chart: no plotting stack."""
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
