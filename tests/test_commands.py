"""Every command README.md and cluster/ show, run as written: overrides only point the recipe at the
session's world and model and shrink steps. The training commands are the session's `tiny_run` (pretrain.py
in its own process on a fresh local Ray that vilaray sizes itself, no `--num-cpus`); their consoles are
checked for people."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = "jobs/recipes/tiny.yaml"
# Lines a person should never see on a job's console: Ray's internals (they go to files under the run).
INTERNALS = ("core_worker", "raylet", "PlacementGroupCleaner", "Deprecat", "gcs_", "(pid=")


def shrunk(world_dir: Path, assets_dir: Path, run_root: Path, *extra: str) -> list[str]:
    """`--set` overrides that point the tiny recipe at the session's tiny world and shrink its steps."""
    sets = [
        f"model.path={assets_dir}",
        f"defaults.data.root={world_dir}",
        f"run_root={run_root}",
        f"stages.sft.evaluation.data_root={world_dir}",
        "stages.sft.evaluation.limit=2",
        *(f"stages.{s}.train.max_steps=2" for s in ("align", "pretrain", "sft")),
        *extra,
    ]
    return [arg for s in sets for arg in ("--set", s)]


def assert_console_for_people(text: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    leaked = [line for line in lines if any(token in line for token in INTERNALS)]
    assert not leaked, "Ray internals on the console:\n" + "\n".join(leaked[:20])
    twice = [line for line, n in Counter(lines).items() if n > 1]
    assert not twice, "lines printed more than once:\n" + "\n".join(twice[:20])


@pytest.mark.slow
def test_pretrain_command_on_a_fresh_local_ray_speaks_to_people(tiny_run):
    """`python jobs/pretrain.py --recipe jobs/recipes/tiny.yaml` as a user runs it (the session's
    `tiny_run`): its own local Ray, sized by vilaray (5 tokenizer actors and 2 train workers in the
    pretrain stage were refused with one slot per core), and a console that speaks to people."""
    run_dir, console = tiny_run.paths.run_dir, tiny_run.consoles["pretrain"]
    for stage in ("align", "pretrain"):
        last = tiny_run.recipe.stages[stage].train.max_steps
        assert (run_dir / stage / "export" / "config.json").is_file()
        assert f"[{stage}] step {last}/{last} loss" in console and f"[{stage}] what trains:" in console
        assert f"[{stage}] export: {run_dir / stage / 'export'}" in console
    assert_console_for_people(console)
    # Ray's own logs are kept, under the run: the driver's records and a link to the session's files.
    assert (run_dir / "logs" / "driver.log").is_file()
    assert (run_dir / "logs" / "ray").is_symlink() and any((run_dir / "logs" / "ray").glob("worker-*"))
    # One machine has no node to lose: the job's local Ray ran Ray Train without its preemption watcher.
    actors = {
        line.removeprefix(":actor_name:")
        for out in tiny_run.pretrain_ray_logs.glob("worker-*.out")
        for line in out.read_text(errors="replace").splitlines()
        if line.startswith(":actor_name:")
    }
    assert {"TrainController", "RayTrainWorker"} <= actors and "PreemptionWatcher" not in actors, actors


@pytest.mark.slow
def test_sft_and_evaluate_commands(tiny_run, small_world_dir, capsys):
    import evaluate

    # python jobs/sft.py --recipe jobs/recipes/tiny.yaml (run by `tiny_run` through its main)
    last = tiny_run.recipe.stages["sft"].train.max_steps
    assert f"[sft] step {last}/{last} loss" in tiny_run.consoles["sft"]
    assert_console_for_people(tiny_run.consoles["sft"])
    # python jobs/evaluate.py --model runs/demo/sft/export --model runs/demo/pretrain/export --shots 0,4
    # (with the README's --control: each model's shuffled-image row from the same inference pass)
    models = [str(tiny_run.exports[s]) for s in ("sft", "pretrain")]
    out_dir = tiny_run.paths.run_dir / "eval"
    argv = ["--model", models[0], "--model", models[1], "--shots", "0,4", "--control"]
    assert (
        evaluate.main([*argv, "--data-root", str(small_world_dir), "--limit", "2", "--out", str(out_dir)])
        == 0
    )
    table = capsys.readouterr().out
    assert all(m in table for m in models) and "4-shot" in table
    assert all(f"{m} (shuffled images)" in table for m in models)
    result = json.loads((out_dir / "results.json").read_text())
    assert result["meta"]["shots"] == [0, 4] and result["meta"]["models"] == models
    assert_console_for_people(table)


def test_evaluate_command_over_shot_counts_in_one_process(world_dir, assets_dir, tmp_path, capsys):
    """README (VILA's findings, the few-shot probe): `python jobs/evaluate.py --model runs/demo/sft/export
    --tasks shapes_vqa,shapes_captions --shots 0,1,2,3,4 --limit 300 --backend local`, here on the session's
    model and world with 2 samples per task."""
    import evaluate

    argv = ["--model", str(assets_dir), "--tasks", "shapes_vqa,shapes_captions", "--shots", "0,1,2,3,4",
            "--limit", "2", "--backend", "local", "--data-root", str(world_dir), "--out", str(tmp_path)]  # fmt: skip
    assert evaluate.main(argv) == 0
    table = capsys.readouterr().out
    assert all(f"shapes_vqa/{k}-shot" in table and f"shapes_captions/{k}-shot" in table for k in range(5))
    assert "shapes_text_mc" not in table
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["meta"]["shots"] == [0, 1, 2, 3, 4]
    assert_console_for_people(table)


@pytest.mark.parametrize("job", ["pretrain", "sft"])
def test_dry_run_validates_without_training(job, world_dir, assets_dir, tmp_path, capsys):
    module = __import__(job)
    assert module.main(["--recipe", TINY, "--dry-run", *shrunk(world_dir, assets_dir, tmp_path)]) == 0
    out = capsys.readouterr().out
    stages = ["align", "pretrain"] if job == "pretrain" else ["sft"]
    assert all(f"[{s}] zero 2, 2 workers" in out for s in stages)
    assert not (tmp_path / "tiny").exists()


def test_prepare_data_with_and_without_stage(ray_session, world_dir, assets_dir, tmp_path, capsys):
    import prepare_data

    # README: --stage pretrain --set stages.pretrain.data.mix.interleaved_mmc4=0.3
    readme = ["--stage", "pretrain", "--set", "stages.pretrain.data.mix.interleaved_mmc4=0.3"]
    argv = ["--recipe", TINY, *shrunk(world_dir, assets_dir, tmp_path)]
    assert prepare_data.main([*argv, *readme, "--run-name", "pretrain"]) == 0
    stats = json.loads((tmp_path / "pretrain" / "prepared" / "stats.json").read_text())
    weights = stats["mixture"]["token_weights"]
    assert stats["stage"] == "pretrain" and len(weights) == 5
    assert weights["interleaved_mmc4"] == pytest.approx(0.3 / 1.2)  # the override, renormalised
    assert "packing efficiency" in capsys.readouterr().out
    # cluster/: no --stage, so the recipe's first stage's data (align: pairs only).
    assert prepare_data.main([*argv, "--run-name", "first"]) == 0
    stats = json.loads((tmp_path / "first" / "prepared" / "stats.json").read_text())
    assert stats["stage"] is None and list(stats["mixture"]["token_weights"]) == ["pairs"]
    assert_console_for_people(capsys.readouterr().out)
    # A stage the recipe does not have is refused naming the stages it has.
    assert prepare_data.main([*argv, "--stage", "nope"]) == 2
    assert "stages are ['align', 'pretrain', 'sft']" in capsys.readouterr().err


def test_make_world_command_reuses_a_built_world(world, assets_dir, tmp_path, capsys):
    import make_world

    # python jobs/make_world.py --scale small [--photo], on the session's (tiny, photo) world: both
    # builders find their outputs and keep them.
    argv = ["--out", str(world.root), "--assets", str(assets_dir), "--scale", "tiny", "--photo"]
    argv += ["--logs", str(tmp_path)]  # not runs/ in the checkout
    before = (world.root / "manifest.json").read_bytes()
    assert make_world.main(argv) == 0
    assert (world.root / "manifest.json").read_bytes() == before
    out = capsys.readouterr().out
    assert f"tiny assets: {assets_dir}" in out and "scale tiny, seed 0, photo variant yes" in out
    assert_console_for_people(out)


def test_make_world_with_sequence_distractors_builds_the_probes_world(world, assets_dir, tmp_path, capsys):
    """`--sequence-distractors P` (the README's in-context-learning probe) changes the world's sft_messages
    only (what the questions are is `test_synth`'s), and the manifest records it; out of [0, 1] it is
    refused before any build, naming the flag."""
    import make_world

    out = tmp_path / "world"
    argv = ["--out", str(out), "--assets", str(assets_dir), "--scale", "tiny", "--logs", str(tmp_path)]
    with pytest.raises(SystemExit) as refused:
        make_world.main([*argv, "--sequence-distractors", "1.5"])
    assert refused.value.code == 2 and "--sequence-distractors" in capsys.readouterr().err
    assert not out.exists()
    tokenizer = (assets_dir / "tokenizer.json").read_bytes()
    assert make_world.main([*argv, "--sequence-distractors", "1"]) == 0
    # The shipped assets are kept for the probe's world (its SFT starts from the shipped pretrain export).
    assert (assets_dir / "tokenizer.json").read_bytes() == tokenizer
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scale"]["sequence_distractors"] == 1.0
    # The session's tiny world is the same seed and scale at 0.
    for kind, files in manifest["files"].items():
        same = [(out / f).read_bytes() == (world.root / f).read_bytes() for f in files]
        assert all(same) if kind != "sft_messages" else not all(same), kind
    # The README's next step, `python jobs/sft.py ... --set stages.sft.data.root=<the probe's world>`: a dry run
    # refuses an override key the recipe lacks (it does not read the data; the training runs are elsewhere).
    import sft

    sets = shrunk(world.root, assets_dir, tmp_path / "runs", f"stages.sft.data.root={out}")
    assert sft.main(["--recipe", TINY, "--dry-run", *sets]) == 0
    assert "[sft] zero 2, 2 workers" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bench", ["attention", "data", "train", "eval", "lm-head", "serve", "tune", "stage-data"]
)
def test_benchmark_commands_parse(bench):
    import benchmark

    # python jobs/benchmark.py attention|data|train|eval|lm-head|serve|tune|stage-data (runs: tests/test_benchmark.py's)
    args = benchmark.build_parser().parse_args([bench])
    config = benchmark.config_from_args(benchmark.BENCHMARKS.get(bench), args)
    assert args.benchmark == bench and config == benchmark.BENCHMARKS.get(bench).config()


@pytest.mark.slow
def test_demo_ends_with_one_question_through_serve(ray_session, tiny_run, small_world_dir, capfd):
    """`make demo`'s last step on the session's SFT export: Serve up on this Ray, one held-out VQA question
    with its image through the `openai` client, Serve down again, and none of Serve's own lines on the
    console."""
    import demo
    from ray import serve
    from vilaray.synth.chats import SHORT_ANSWER

    line = demo.ask_served(tiny_run.exports["sft"], small_world_dir)
    printed = capfd.readouterr()
    assert "Started Serve" not in printed.err + printed.out and "is ready at" not in printed.err + printed.out
    assert line.startswith("[demo] asked through Ray Serve + openai about shapes_val_"), line
    question, answer = line.split(": ", 1)[1].rsplit(" -> ", 1)
    # Asked as the SFT data asks (short-answer suffix), the export answers in a word or two.
    assert SHORT_ANSWER in question, question
    assert 0 < len(answer.strip("'\"").split()) <= 3, line
    status = serve.status()  # Serve is down again: no proxies, no applications
    assert not status.proxies and not status.applications
