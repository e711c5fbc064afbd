"""Eval harness: task files fail fast, k-shot prompts never hold their query, bad records are counted, and
Ray Data batch inference gives the one-process predictions."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import SUITE
from vilaray.evals.demonstrations import consensus
from vilaray.evals.harness import (
    baseline_result,
    evaluate_model,
    evaluate_with_control,
    load_tasks,
    prompt_items,
    score,
    shuffled_images,
)
from vilaray.evals.inference import infer_local
from vilaray.evals.prompts import ShotLeak, build_prompt, draw_shots
from vilaray.evals.tasks import EvalSample, TaskFileError, load_split, load_suite
from vilaray.synth.chats import BRIEF_PROMPTS, SHORT_ANSWER


def suite_copy(tmp_path: Path, edit=None) -> Path:
    raw = yaml.safe_load(SUITE.read_text())
    if edit:
        edit(raw)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_suite_loads_on_the_world(world_dir):
    suite, base = load_suite(SUITE, world_dir)
    assert {t.kind for t in suite.tasks} == {"vqa", "caption", "multiple_choice"}
    tasks = load_tasks(suite, base, limit=5)
    assert all(len(t.samples) == 5 and t.support and t.skipped == 0 for t in tasks)
    # The prompts ask the way the world's SFT data does, or the score measures the phrasing, not the model.
    queries = {t.name: t.prompt.query for t in suite.tasks}
    assert queries["shapes_vqa"].endswith("\n" + SHORT_ANSWER)
    assert queries["shapes_text_mc"].endswith("\n" + SHORT_ANSWER)
    assert queries["shapes_captions"].strip() in BRIEF_PROMPTS


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["tasks"][0].pop("metric"), "tasks.0.metric: Field required"),
        (lambda r: r["tasks"][1].update(metric="bleu"), "tasks.1.metric"),
        (lambda r: r["tasks"][0]["eval"].pop("annotations"), "tasks.shapes_vqa.eval.annotations: required"),
        (
            lambda r: r["tasks"][2]["support"].update(items="nope.jsonl"),
            "tasks.shapes_text_mc.support.items:",
        ),
        (lambda r: r["tasks"][0].update(colour="red"), "tasks.0.colour: Extra inputs"),
        (
            lambda r: r["tasks"][0]["prompt"].update(demonstration="consensus"),
            "tasks.0: Value error, prompt.demonstration: 'consensus' picks among a caption's references",
        ),
    ],
)
def test_malformed_task_file_names_file_and_field(tmp_path, world_dir, edit, message):
    path = suite_copy(tmp_path, edit)
    with pytest.raises(TaskFileError, match="suite.yaml: " + message.replace(".", r"\.")):
        load_suite(path, world_dir)


def test_kshot_prompt_never_holds_its_query_and_shots_are_reproducible(tmp_path, world_dir):
    suite, base = load_suite(SUITE, world_dir)
    vqa = suite.tasks[0]
    queries, _ = load_split(vqa, "eval", base)
    support, _ = load_split(vqa, "support", base)
    # Plant the query among the demonstrations under another id: caught by content (image + text), not id.
    query = queries[0]
    planted = dataclasses.replace(query, uid="planted")
    pool = [planted, *support[:4]]
    for seed in range(20):
        shots = draw_shots(pool, query, 4, seed)
        assert "planted" not in {s.uid for s in shots}
        item = build_prompt(vqa, query, shots)
        assert len(item.images) == 5 and item.images[-1] == query.image
        assert json.loads(item.messages)[-1]["content"][-1]["text"].count(query.fields["Question"]) == 1
    with pytest.raises(ShotLeak):
        build_prompt(vqa, query, [planted, *support[:3]])
    with pytest.raises(ValueError, match="fewer than 4 shots"):
        draw_shots([planted, *support[:3]], query, 4, 0)

    first = [s.uid for s in draw_shots(support, query, 4, 7)]
    assert first == [s.uid for s in draw_shots(support, query, 4, 7)]
    assert any(first != [s.uid for s in draw_shots(support, query, 4, seed)] for seed in range(8, 12))


def test_consensus_demonstrations_show_the_reference_the_others_agree_with(tmp_path, world_dir):
    one = EvalSample(
        "1",
        {},
        [
            "A picture of a circle.",
            "A small red circle at the top.",
            "There is a small red circle at the top.",
        ],
        "A picture of a circle.",
    )
    two = EvalSample("2", {}, ["A large blue star on the left.", "A picture of a star."], "")
    assert [s.answer for s in consensus([one, two])] == [one.references[1], two.references[0]]

    def first(raw):
        raw["tasks"][1]["prompt"]["demonstration"] = "first"

    suite, base = load_suite(suite_copy(tmp_path, first), world_dir)
    shipped = load_suite(SUITE, world_dir)[0]
    assert shipped.tasks[1].prompt.demonstration == "consensus"
    first, picked = (
        [t for t in load_tasks(s, base, limit=5) if t.task.kind == "caption"][0] for s in (suite, shipped)
    )
    assert [s.answer for s in first.demonstrations] == [s.references[0] for s in first.support]
    assert all(s.answer in s.references for s in picked.demonstrations)
    # The world's five styles per image include a terse one ("A picture of a circle.") that the other four
    # barely share; consensus never shows it where a fuller style is there.
    assert not any(s.answer.startswith("A picture of") for s in picked.demonstrations)
    # What is asked and the blind guess stay; only what the demonstrations show changes.
    assert picked.samples == first.samples and picked.support == first.support
    shown = {json.loads(i.messages)[1]["content"][0]["text"] for i in prompt_items([picked], [4], 0)}
    assert shown <= {s.answer for s in picked.demonstrations}


def test_shuffled_image_control_swaps_every_query_image_within_its_task(world_dir):
    suite, base = load_suite(SUITE, world_dir)
    tasks = load_tasks(suite, base, 12)
    items = prompt_items(tasks, [0, 4], suite.seed)
    control = shuffled_images(items, suite.seed)
    assert control == shuffled_images(items, suite.seed)  # seeded
    for before, after in zip(items, control):
        assert (before.uid, before.task, before.shots, before.messages) == (
            after.uid,
            after.task,
            after.shots,
            after.messages,
        )
        assert after.images[:-1] == before.images[:-1]  # demonstrations keep their images
        if before.images:
            assert after.images[-1] != before.images[-1]
            peers = {i.images[-1] for i in items if (i.task, i.shots) == (before.task, before.shots)}
            assert after.images[-1] in peers
        else:
            assert after == before  # text-only items have nothing to swap
    # One bijection over each group's distinct images: the same image always moves to the same other one.
    for key in {(i.task, i.shots) for i in items if i.images}:
        moves = {(a.images[-1], b.images[-1]) for a, b in zip(items, control) if (a.task, a.shots) == key}
        assert len({src for src, _ in moves}) == len(moves) == len({dst for _, dst in moves}) > 1


def test_bad_records_are_counted_not_fatal(tmp_path, world_dir):
    world = tmp_path / "world"
    shutil.copytree(world_dir / "eval", world / "eval")
    ann_path = world / "eval/vqa/annotations.json"
    anns = json.loads(ann_path.read_text())
    anns["annotations"] = anns["annotations"][1:]  # the first question loses its annotation
    ann_path.write_text(json.dumps(anns))
    images = sorted((world / "eval/captions/images").iterdir())
    images[0].write_bytes(b"not a png")  # a corrupt image
    images[1].unlink()  # a missing one
    with (world / "eval/text_mc/test.jsonl").open("a") as f:
        f.write('{"question": "broken"}\nnot json\n')
    suite, base = load_suite(SUITE, world)
    skipped = {t.task.name: t.skipped for t in load_tasks(suite, base)}
    assert skipped == {"shapes_vqa": 1, "shapes_captions": 2, "shapes_text_mc": 2}


def test_empty_and_unicode_predictions_score_zero(world_dir):
    suite, base = load_suite(SUITE, world_dir)
    for t in load_tasks(suite, base, limit=4):
        preds = {s.uid: ["", "ü★", "  ", "\n"][i] for i, s in enumerate(t.samples)}
        assert score(t.task.metric, preds, t.samples, 0).value == 0.0


def test_ray_data_inference_matches_one_process(ray_session, world_dir, assets_dir):
    suite, base = load_suite(SUITE, world_dir)
    tasks = load_tasks(suite, base, limit=3)
    # The export and its shuffled-image control in one Ray pass (one actor pool).
    ray_result, ray_control = evaluate_with_control(
        assets_dir, tasks, [0, 2], suite.seed, "tiny", "tiny, shuffled", backend="ray", batch_size=4
    )
    local = evaluate_model(assets_dir, tasks, [0, 2], suite.seed, "tiny", backend="local", batch_size=1)
    assert set(ray_result.scores) == {f"{t.task.name}/{k}-shot" for t in tasks for k in (0, 2)}
    key = [(p["task"], p["shots"], p["uid"]) for p in local.predictions]
    assert key == [(p["task"], p["shots"], p["uid"]) for p in ray_result.predictions]
    # Greedy decoding, batched with left padding vs one at a time: the same text for nearly every prompt.
    same = sum(a["prediction"] == b["prediction"] for a, b in zip(local.predictions, ray_result.predictions))
    assert same >= 0.9 * len(key)
    assert len(prompt_items(tasks, [0, 2], suite.seed)) == len(key)
    # The control's rows came back under their queries' own keys, answered on the swapped images.
    assert ray_control.model == "tiny, shuffled" and set(ray_control.scores) == set(ray_result.scores)
    assert [(p["task"], p["shots"], p["uid"]) for p in ray_control.predictions] == key
    swapped = infer_local(assets_dir, shuffled_images(prompt_items(tasks, [0, 2], suite.seed), suite.seed))
    same = sum(
        p["prediction"] == swapped[(p["task"], p["shots"], p["uid"])]["prediction"]
        for p in ray_control.predictions
    )
    assert same >= 0.9 * len(key)
    base_row = baseline_result(tasks, [0, 2], suite.seed)
    assert 0 < base_row.scores["shapes_text_mc/0-shot"].value < 1
