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
from vilaray.tune.plots import plot_cells, plot_mixtures
from vilaray.tune.space import HARNESS_SCORE, METRIC_PREFIXES, TuneSpace, flatten, trial_overrides


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


def _pm(mean: float, stderr: float, scale: float | None = None) -> str:
    """mean ± SE; `scale` (x100 for harness scores) also fixes one decimal, as the eval tables print."""
    if scale is not None:
        mean, stderr = mean * scale, stderr * scale
        return f"{mean:.1f}" if math.isnan(stderr) else f"{mean:.1f} ± {stderr:.1f}"
    return f"{mean:.4g}" if math.isnan(stderr) else f"{mean:.4g} ± {stderr:.2g}"


def _vila_columns(cells: list[dict]) -> list[str]:
    """The harness columns in VILA's order: per task 0-shot, k-shot, then the 0-shot shuffled-image control
    (a text-only task's equals its score: no image to swap), the VL average last. The k-shot controls stay
    in results.json."""
    names = {n for c in cells for n in c["scores"] if HARNESS_SCORE.match(n)}

    keep = [
        n for n in names
        if not (m := HARNESS_SCORE.match(n))["control"] or m["shots"] == "0"
    ]  # fmt: skip

    def order(name: str) -> tuple:
        m = HARNESS_SCORE.match(name)
        return m["task"] == "vl_avg", m["task"], bool(m["control"]), int(m["shots"])

    return sorted(keep, key=order)


def cells_table(cells: list[dict], metric: str) -> str:
    """Grid mode's table (VILA's layout): a row per cell, mean ± SE over seeds of the objective and of the
    harness's scores x100 as papers print them (VQA %, CIDEr x100); without harness scores, every score as
    logged (the in-training ones; the trials' table has them per trial)."""
    names = _vila_columns(cells)
    scale = 100.0 if names else None
    names = names or sorted({n for c in cells for n in c["scores"]})
    heads = [n.removeprefix("harness/").replace("/shuffled", " shuffled") for n in names]
    head = ["cell", "seeds", f"objective ({metric})", *heads]
    lines = ["Harness scores x100 (VQA %, CIDEr x100).", ""] if scale else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        label = c["cell"].get("cell") or _cell({k: v for k, v in c["cell"].items()}) or "(recipe)"
        cells_ = [str(label), str(c["seeds"]), _pm(c["mean"], c["stderr"])]
        cells_ += [_pm(**c["scores"][n], scale=scale) if n in c["scores"] else "" for n in names]
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
    if cells:
        plot_cells(root / "results.png", cells)
    else:
        plot_mixtures(root / "results.png", rows, metric)
