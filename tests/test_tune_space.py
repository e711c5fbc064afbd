"""Tune's search spaces, trial concurrency and the mixture regression: logic that needs no cluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from vilaray.config import apply_overrides, load_recipe
from vilaray.tune.concurrency import max_concurrent_trials, trial_needs
from vilaray.tune.regression import fit_mixture
from vilaray.tune.space import SpaceError, TuneSpace, flatten, freeze_preset, load_space, trial_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "jobs" / "recipes" / "tiny.yaml"
SMOKE = ROOT / "jobs" / "recipes" / "tune" / "smoke.yaml"


@pytest.fixture(scope="module")
def tiny(world_dir):
    """The shipped tiny recipe on the session's world (spaces that evaluate check the suite's files there)."""
    flags = [f"defaults.data.root={world_dir}", f"stages.sft.evaluation.data_root={world_dir}"]
    return load_recipe(TINY, flags), apply_overrides(yaml.safe_load(TINY.read_text()), flags)


def write_space(tmp_path: Path, start_from: Path, **patch) -> Path:
    """The smoke space with `patch`, starting from `start_from` (a saved VLM) instead of the demo's export."""
    space = yaml.safe_load(SMOKE.read_text()) | {"start_from": str(start_from) if start_from else None}
    for key, value in patch.items():
        if value is None:
            space.pop(key, None)
        else:
            space[key] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_smoke_space_draws_the_same_valid_mixtures_and_every_trial_recipe_validates(
    tiny, assets_dir, tmp_path
):
    recipe, raw = tiny
    space = load_space(write_space(tmp_path, assets_dir), recipe, raw)
    mixes = space.mixtures(recipe, "pretrain")
    assert mixes == space.mixtures(recipe, "pretrain")  # seeded: the same trials on every run and resume
    assert len(mixes) == 4 and all(abs(sum(m.values()) - 1) < 1e-5 for m in mixes)
    assert all(set(m) == {"interleaved", "pairs", "text"} for m in mixes)
    assert len({tuple(m.values()) for m in mixes}) == 4
    for mix in mixes:
        for preset in ("full", "llm_frozen"):
            trial = trial_recipe(
                raw, space, {"mixes": {"pretrain": mix}, "freeze/pretrain": preset, "seed": 3}
            )
            st = trial.stages["pretrain"]
            assert st.data.weights() == pytest.approx(mix) and st.train.max_steps == 40
            assert st.train.seed == st.data.seed == trial.seed == 3  # data order too: seeds are not replicas
            assert st.freeze.language_model.mode == ("full" if preset == "full" else "frozen")
            assert st.validation.every == 10  # held-out loss at ASHA's first rung and every 10 steps
            # Everything the space does not touch is the recipe's.
            assert st.train.lr == recipe.stages["pretrain"].train.lr and "sft" in trial.stages


def test_param_space_is_a_grid_of_the_drawn_mixtures(tiny, assets_dir, tmp_path):
    from ray import tune

    recipe, raw = tiny
    space = load_space(write_space(tmp_path, assets_dir), recipe, raw)
    ps = space.param_space(recipe)
    assert [m["pretrain"] for m in ps["mixes"]["grid_search"]] == space.mixtures(recipe, "pretrain")
    assert isinstance(ps["freeze/pretrain"], tune.search.sample.Categorical)
    assert space.tune_samples() == 1  # one trial per drawn mixture
    assert flatten({"mixes": {"pretrain": {"pairs": 1.0}}, "seed": 0}) == {
        "mix/pretrain": {"pairs": 1.0},
        "seed": 0,
    }


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"stages": ["nope"]}, "stages: 'nope' is not a stage"),
        ({"stages": ["align", "sft"]}, "must follow each other in the recipe's order"),
        ({"start_from": None}, "start_from: stage 'pretrain' starts from stage 'align''s export"),
        ({"start_from": "runs/none/align/export"}, "start_from: runs/none/align/export is not an export"),
        (
            {"mix": {"pretrain": {"sources": ["pairs", "vl_sft"]}}},
            "mix.pretrain: sources ['vl_sft'] are not in stage 'pretrain'",
        ),
        ({"mix": {"sft": {"sources": ["vl_sft"]}}}, "mix.sft: not one of the sweep's stages"),
        ({"mix": None, "freeze": None}, "the space is empty"),
        ({"freeze": {"pretrain": ["lora(8)", "thaw"]}}, "unknown freeze preset 'thaw'"),
        (
            {"params": {"stages.pretrain.train.lr_typo": {"loguniform": [1e-4, 1e-3]}}},
            "stages.pretrain.train.lr_typo",
        ),
        (
            {"params": {"stages.pretrain.train.lr": {"lognormal": [1e-4, 1e-3]}}},
            "unknown distribution 'lognormal'",
        ),
        (
            {"params": {"stages.pretrain.train.lr": {"loguniform": [1e-3, 1e-4]}}},
            "params.stages.pretrain.train.lr: expected [low, high]",
        ),
        (
            {"objective": {"metric": "accuracy", "mode": "max"}},
            "objective: metric 'accuracy': expected val_loss",
        ),
        ({"budget_steps": 0}, "budget_steps"),
        ({"mode": "grid"}, "grid mode lists its mixtures"),
        (
            {
                "stages": ["pretrain", "sft"],
                "mix": {
                    "pretrain": {"points": [{"pairs": 1}]},
                    "sft": {"points": [{"vl_sft": 1}, {"text_sft": 1}]},
                },
            },
            "mix: every stage lists as many points",
        ),
        ({"cells": {"frozen": {"freeze": {"pretrain": "llm_frozen"}}}}, "cells are an ablation grid"),
        (
            {"mode": "grid", "mix": None, "cells": {"a": {"mix": {"pretrain": {"pairs": 1, "vl_sft": 1}}}}},
            "cells.a.mix.pretrain: sources ['vl_sft'] are not in stage 'pretrain'",
        ),
        (
            {"mode": "grid", "mix": None, "cells": {"a": {"freeze": {"pretrain": "thaw"}}}},
            "unknown freeze preset 'thaw'",
        ),
        (
            {"mode": "grid", "mix": None, "cells": {"a": {"set": {"stages.pretrain.train.lr_typo": 1}}}},
            "stages.pretrain.train.lr_typo",
        ),
        (
            {"objective": {"metric": "harness/shapes_vqa/4-shot", "mode": "max"}},
            "'harness/shapes_vqa/4-shot' is a harness score: add an `evaluate` section",
        ),
        (
            {"objective": {"metric": "harness/shapes_vqa/4-shot", "mode": "max"}, "evaluate": {}},
            "scheduler: ASHA stops trials on in-training results",
        ),
        (
            {
                "objective": {"metric": "harness/shapes_vqa/8-shot", "mode": "max"},
                "evaluate": {},
                "scheduler": {"name": "fifo"},
            },
            "objective: 'harness/shapes_vqa/8-shot' is not one of the evaluation's scores",
        ),  # fmt: skip
        ({"evaluate": {"tasks": ["shapes_vqa", "gqa"]}}, "evaluate.tasks: no task named ['gqa']"),
    ],
)
def test_bad_space_fails_before_any_trial_naming_the_key(tiny, assets_dir, tmp_path, patch, needle):
    recipe, raw = tiny
    with pytest.raises(SpaceError) as err:
        load_space(write_space(tmp_path, patch.pop("start_from", assets_dir), **patch), recipe, raw)
    assert needle in str(err.value), str(err.value)


def test_drill_flag_is_parsed_or_refused_before_any_trial():
    from vilaray.config import RecipeError
    from vilaray.tune.cli import parse_drills
    from vilaray.tune.trial import trial_number

    assert parse_drills(["3:6", "0:2"]) == {3: 6, 0: 2}
    for bad in ("3", "3:", "x:6", "3:0", "-1:4"):
        with pytest.raises(RecipeError, match="TRIAL:STEP"):
            parse_drills([bad])
    assert trial_number("5f0a1_00003") == 3


def test_trials_log_to_wandb_in_one_group_per_sweep(world_dir, tmp_path):
    """A trial's recipe puts every wandb-logging stage in the sweep's group; the sink writes it (real wandb,
    offline), the run named after the trial and stage."""
    from _wandb_records import run_record
    from vilaray.train.metrics import RunInfo, WandbSink
    from vilaray.tune.trial import wandb_grouped

    flags = [f"defaults.data.root={world_dir}", f"stages.sft.evaluation.data_root={world_dir}"]
    plain = load_recipe(TINY, flags)
    assert wandb_grouped(plain, "smoke") == plain  # no wandb, nothing to group
    logged = wandb_grouped(load_recipe(TINY, [*flags, "defaults.train.wandb.project=vilaray-tests"]), "smoke")
    assert {st.train.wandb.group for st in logged.stages.values()} == {"smoke"}
    sink = WandbSink(tmp_path, RunInfo("a1b2c_00003", "pretrain", {}, logged.stages["pretrain"].train.wandb))
    sink.write(1, {"loss": 2.5})
    sink.close()
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    record = run_record(run_file)
    assert record["group"] == "smoke" and record["name"] == "a1b2c_00003-pretrain", record


def test_grid_mode_repeats_each_listed_mixture_per_seed(tiny, assets_dir, tmp_path):
    from ray.tune.search.variant_generator import generate_variants

    recipe, raw = tiny
    points = [{"pairs": 1, "text": 1}, {"pairs": 3, "text": 1}]
    path = write_space(
        tmp_path, assets_dir, mode="grid", mix={"pretrain": {"points": points}}, seeds=[0, 1, 2]
    )
    space = load_space(path, recipe, raw)
    trials = [flatten(cfg) for _, cfg in generate_variants(space.param_space(recipe))]
    cells = sorted((t["mix/pretrain"]["pairs"], t["freeze/pretrain"], t["seed"]) for t in trials)
    assert len(trials) == 2 * 2 * 3 and len(set(cells)) == 12
    assert {c[0] for c in cells} == {0.5, 0.75}


def test_freeze_presets():
    assert freeze_preset("lora(8)")["language_model"] == {"mode": "lora", "r": 8, "alpha": 16}
    assert freeze_preset("tower_last_k(2)")["vision_tower"] == {"mode": "last_k", "k": 2}
    with pytest.raises(SpaceError, match="expected name or name"):
        freeze_preset("lora 8")


def test_objective_as_a_weighted_sum_and_missing_parts():
    space = TuneSpace.model_validate(
        {
            **yaml.safe_load(SMOKE.read_text()),
            "objective": {"weights": {"eval/shapes_vqa/0-shot": 1.0, "val_loss": -0.1}, "mode": "max"},
        }
    )
    assert space.objective.value({"eval/shapes_vqa/0-shot": 0.5, "val_loss": 2.0}) == pytest.approx(0.3)
    assert space.objective.value({"val_loss": 2.0}) is None  # a report without the eval: not a result


def test_concurrency_follows_real_resources(tiny):
    recipe, _ = tiny
    need = trial_needs(recipe, ["pretrain"])
    assert need == {"CPU": 2 * 0.5 + 5 * 0.5, "GPU": 0.0}
    assert max_concurrent_trials({"CPU": 2, "GPU": 0}, need) == 1  # a 2-core laptop: one at a time
    assert max_concurrent_trials({"CPU": 16, "GPU": 0}, need) == 4
    assert max_concurrent_trials({"CPU": 64, "GPU": 8}, {"CPU": 6, "GPU": 4}) == 2  # GPUs bound first
    assert max_concurrent_trials({"CPU": 1, "GPU": 0}, {"CPU": 8, "GPU": 0}) == 1  # never zero


def test_mixture_regression_finds_the_optimum_and_ranks_unseen_trials():
    """A synthetic objective with its optimum at (0.5, 0.3, 0.2): 40 noisy trials on Dirichlet mixtures."""
    rng = np.random.default_rng(0)
    optimum = np.array([0.5, 0.3, 0.2])
    x = rng.dirichlet(np.ones(3), size=40)
    y = -(((x - optimum) ** 2).sum(axis=1)) + rng.normal(0, 0.005, size=40)
    fit = fit_mixture([dict(zip("abc", row)) for row in x], list(y), mode="max")
    best = np.array([fit.best()[s] for s in "abc"])
    assert np.abs(best - optimum).sum() <= 0.1, best
    assert fit.heldout_spearman >= 0.8, fit.heldout_spearman
    proposals = fit.propose(3)
    assert len(proposals) == 3 and all(abs(sum(p.values()) - 1) < 1e-5 for p in proposals)
    # The same data as a loss to minimise proposes the same point.
    flipped = fit_mixture([dict(zip("abc", row)) for row in x], list(-y), mode="min")
    assert np.abs(np.array([flipped.best()[s] for s in "abc"]) - best).sum() < 1e-9
    assert fit.family == "quadratic"
    with pytest.raises(ValueError, match="at least 5 finished trials"):
        fit_mixture([{"a": 1.0}], [0.0], mode="max")


def test_mixture_regression_follows_a_mixing_law_where_a_quadratic_cannot():
    """A held-out loss shaped as pretraining sweeps show it (each source's loss climbs steeply as its share
    nears zero: the mean of a_i - b_i log(w_i + 0.005)), 16 noisy trials, as many as the README's sweep:
    cross-validation picks the log features, ranks unseen trials, and finds the optimum."""
    rng = np.random.default_rng(1)
    a, b = np.array([3.0, 2.0, 0.5]), np.array([0.30, 0.15, 0.20])

    def loss(w):
        return (a - b * np.log(np.atleast_2d(w) + 0.005)).mean(axis=1)

    x = rng.dirichlet(np.ones(3), size=16)
    fit = fit_mixture([dict(zip("abc", row)) for row in x], list(loss(x) + rng.normal(0, 0.01, 16)), "min")
    assert fit.family.startswith("log(w + "), fit.family
    assert fit.heldout_spearman >= 0.8, fit.heldout_spearman
    optimum = b / b.sum()  # where every d/dw_i of sum b_i log(w_i) is equal (eps aside)
    best = np.array([fit.best()[s] for s in "abc"])
    assert np.abs(best - optimum).sum() <= 0.15, (best, optimum)
    assert loss(best)[0] - loss(optimum)[0] < 0.01


def test_fit_command_fits_a_sweeps_results(tiny, tmp_path, capsys):
    """`jobs/tune.py --fit NAME` on a sweep's folder (here results of 12 trials with a known optimum,
    written as a sweep writes them): the fit, its held-out rank correlation and the best predicted mix."""
    import tune as job
    from conftest import write_quadratic_sweep

    _, raw = tiny
    root = tmp_path / "synth"
    space = TuneSpace.model_validate(yaml.safe_load(SMOKE.read_text()))
    write_quadratic_sweep(root, space, raw, steps=40)
    assert job.main(["--recipe", str(TINY), "--set", f"run_root={tmp_path}", "--fit", "synth"]) == 0
    assert "held-out Spearman" in capsys.readouterr().out
    fit = json.loads((root / "results.json").read_text())["fit"]
    assert fit["trials"] == 12 and fit["heldout_spearman"] > 0.5
    assert abs(fit["best_predicted"]["pairs"] - 0.5) < 0.15
    assert job.main(["--recipe", str(TINY), "--set", f"run_root={tmp_path}", "--fit", "none"]) == 2


@pytest.mark.parametrize(
    "path", sorted((ROOT / "jobs" / "recipes" / "tune").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_spaces_load_on_the_tiny_recipe(tiny, assets_dir, path):
    recipe, raw = tiny
    space = load_space(path, recipe, raw, start_from=str(assets_dir))
    assert space.param_space(recipe) and space.check(recipe, raw) is None


def test_findings_grid_is_one_factor_cells_crossed_with_seeds(tiny, assets_dir):
    """VILA's ablations: every cell is the recipe with one thing changed, at three seeds each."""
    from ray.tune.search.variant_generator import generate_variants

    recipe, raw = tiny
    space = load_space(ROOT / "jobs/recipes/tune/vila-findings.yaml", recipe, raw, start_from=str(assets_dir))
    trials = [flatten(cfg) for _, cfg in generate_variants(space.param_space(recipe))]
    assert space.tune_samples() == 1  # the grid is the whole sweep
    assert sorted((t["cell"], t["seed"]) for t in trials) == sorted(
        (c, s)
        for c in ("full", "llm_frozen", "pairs_only", "interleaved_only", "sft_no_text")
        for s in (0, 1, 2)
    )
    built = {t["cell"]: trial_recipe(raw, space, t) for t in trials if t["seed"] == 1}
    full = built["full"]
    for stage in ("pretrain", "sft"):
        st = full.stages[stage]
        assert st.data.weights() == recipe.stages[stage].data.weights()
        assert st.freeze == recipe.stages[stage].freeze and st.train.max_steps == 150
        assert st.train.seed == st.data.seed == 1
    assert built["llm_frozen"].stages["pretrain"].freeze.language_model.mode == "frozen"
    assert built["llm_frozen"].stages["sft"].freeze.language_model.mode == "full"
    assert set(built["pairs_only"].stages["pretrain"].data.weights()) == {"pairs", "pairs_llava", "text"}
    assert set(built["interleaved_only"].stages["pretrain"].data.weights()) == {
        "interleaved", "interleaved_mmc4", "text"
    }  # fmt: skip
    assert "text_sft" not in built["sft_no_text"].stages["sft"].data.weights()
    assert built["sft_no_text"].stages["pretrain"].data.weights() == recipe.stages["pretrain"].data.weights()
    assert space.evaluate.metrics(["shapes_vqa"]) >= {
        "harness/vl_avg/4-shot",
        "harness/shapes_vqa/0-shot/shuffled",
    }
    # The harness's inference actor needs a CPU once the trial's train workers are gone.
    assert trial_needs(full, ["pretrain"], evaluates=True)["CPU"] >= 1.0
    # SFT's in-training benchmark reads the suite when the stage starts: missing files fail the sweep first.
    raw_missing = raw | {"stages": {**raw["stages"], "sft": {**raw["stages"]["sft"]}}}
    raw_missing["stages"]["sft"]["evaluation"] = {
        **raw["stages"]["sft"]["evaluation"],
        "data_root": "/nowhere",
    }
    every = raw["stages"]["sft"]["evaluation"]["every"]
    with pytest.raises(
        SpaceError, match=rf"stages.sft.evaluation \(run every {every} steps\): .*does not exist"
    ):
        load_space(
            ROOT / "jobs/recipes/tune/vila-findings.yaml", recipe, raw_missing, start_from=str(assets_dir)
        )


def test_grid_table_columns_in_vilas_order():
    """Per task 0-shot, k-shot, then the 0-shot shuffled-image control (k-shot controls are left to
    results.json); the VL average last."""
    from vilaray.tune.results import cells_table

    def cell(name, vqa):
        scores = {"harness/vl_avg/0-shot": vqa, "harness/shapes_vqa/4-shot": vqa - 0.1,
                  "harness/shapes_vqa/0-shot": vqa, "harness/shapes_vqa/0-shot/shuffled": 0.2,
                  "harness/shapes_vqa/4-shot/shuffled": 0.2, "harness/text_mc/0-shot": 0.4,
                  "harness/text_mc/0-shot/shuffled": 0.4}  # fmt: skip
        return {"cell": {"cell": name}, "seeds": 1, "mean": vqa, "stderr": float("nan"),
                "scores": {k: {"mean": v, "stderr": float("nan")} for k, v in scores.items()}}  # fmt: skip

    text = cells_table([cell("full", 0.5), cell("llm_frozen", 0.3)], "harness/vl_avg/0-shot")
    head = "| cell | seeds | objective (harness/vl_avg/0-shot) | shapes_vqa/0-shot | shapes_vqa/4-shot |"
    assert (
        head + " shapes_vqa/0-shot shuffled | text_mc/0-shot | text_mc/0-shot shuffled | vl_avg/0-shot |"
        in text
    )
    assert "| llm_frozen | 1 | 0.3 | 30.0 | 20.0 | 20.0 | 40.0 | 40.0 | 30.0 |" in text


def test_grid_results_per_cell_mean_and_standard_error_over_seeds(tiny, tmp_path):
    """results.md leads with VILA's layout: a row per cell, each score's mean ± SE over its seeds."""
    from vilaray.tune.results import TrialRow, cells_summary, write_results

    recipe, raw = tiny
    space = TuneSpace.model_validate(
        yaml.safe_load((ROOT / "jobs/recipes/tune/vila-findings.yaml").read_text())
    )
    rows = [
        TrialRow(f"{cell}{seed}", "completed", {"cell": cell, "seed": seed}, 300, vqa,
                 {"harness/shapes_vqa/4-shot": vqa, "harness/shapes_vqa/4-shot/stderr": 0.03})
        for cell, base in (("full", 0.6), ("llm_frozen", 0.3))
        for seed, vqa in enumerate((base - 0.1, base, base + 0.1))
    ] + [TrialRow("late", "error: boom", {"cell": "full", "seed": 3}, 10)]  # fmt: skip
    cells = {c["cell"]["cell"]: c for c in cells_summary(rows)}
    assert cells["full"]["seeds"] == 3 and cells["full"]["mean"] == pytest.approx(0.6)
    assert cells["full"]["stderr"] == pytest.approx(0.1 / 3**0.5)  # sd 0.1 over 3 seeds
    assert set(cells["llm_frozen"]["scores"]) == {"harness/shapes_vqa/4-shot"}  # not the bootstrap errors
    write_results(tmp_path, rows, space, raw)
    md = (tmp_path / "results.md").read_text()
    assert (
        "| full | 3 | 0.6 ± 0.058 | 60.0 ± 5.8 |" in md
        and "| llm_frozen | 3 | 0.3 ± 0.058 | 30.0 ± 5.8 |" in md
    )
    assert md.index("Per cell") < md.index("## Trials")
    # results.png in grid mode: a bar per cell and shot count, its height the cell's mean over seeds.
    from PIL import Image
    from vilaray.tune.plots import SHOT_COLORS

    png = Image.open(tmp_path / "results.png").convert("RGB")
    bar_columns: dict[int, int] = {}
    for x in range(png.width):
        height = sum(png.getpixel((x, y)) == SHOT_COLORS[0] for y in range(png.height))
        if height:
            bar_columns[x] = height
    first, second = (
        [h for x, h in bar_columns.items() if (x < min(bar_columns) + 10) == left] for left in (True, False)
    )
    assert first and second and max(first) / max(second) == pytest.approx(0.6 / 0.3, rel=0.05)
