"""Quick VQA check: answer normalisation, VQA scoring and the majority baseline on hand-written cases."""

from __future__ import annotations

import json

import pytest
from vilaray.evals.quick_vqa import (
    VQAQuestion,
    first_answer,
    load_split,
    majority_answer,
    normalize_answer,
    sample_questions,
    score,
    user_text,
    vqa_score,
)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Two.", "2"),
        ("  The Circle ", "circle"),
        ("a large, red star!", "large red star"),
        ("don't know", "dont know"),
        ("none", "0"),
        ("1.5", "1.5"),
        ("on the right", "on right"),
    ],
)
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_full_agreement_after_normalisation_scores_one():
    assert vqa_score("Two.", ["2"] * 10) == 1.0


def test_two_of_ten_annotators_score_two_thirds():
    assert vqa_score("big", ["big"] * 2 + ["large"] * 8) == pytest.approx(2 / 3)


def test_three_annotators_are_enough_and_none_scores_zero():
    assert vqa_score("yes", ["yes", "Yes", "yes."] + ["yeah"] * 7) == 1.0
    assert vqa_score("no", ["yes"] * 10) == 0.0


def test_first_answer_stops_at_end_of_turn_and_line():
    assert first_answer("circle<|im_end|>\n<|im_start|>user") == "circle"
    assert first_answer(" red\nThe star is red.") == "red"


def test_prompt_matches_the_sft_phrasing():
    from vilaray.synth.chats import SHORT_ANSWER

    assert user_text("is there a red star?") == f"\nIs there a red star?\n{SHORT_ANSWER}"


def _write_split(root, subtype, rows):
    """A hand-made VQA split: rows of (question, multiple_choice_answer, answers)."""
    root.mkdir(parents=True)
    questions = [{"image_id": i, "question": q, "question_id": 10 * i} for i, (q, _, _) in enumerate(rows)]
    annotations = [
        {
            "question_id": 10 * i,
            "image_id": i,
            "multiple_choice_answer": mc,
            "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)],
        }
        for i, (_, mc, answers) in enumerate(rows)
    ]
    common = {"data_type": "shapes", "data_subtype": subtype}
    (root / "questions.json").write_text(json.dumps({**common, "questions": questions}))
    (root / "annotations.json").write_text(json.dumps({**common, "annotations": annotations}))
    return root


def test_majority_baseline_on_a_hand_made_split(tmp_path):
    support = _write_split(
        tmp_path / "vqa_train",
        "train",
        [("how many?", "1", ["1"] * 10), ("how many?", "1", ["1"] * 10), ("color?", "red", ["red"] * 10)],
    )
    held_out = _write_split(
        tmp_path / "vqa",
        "val",
        [("how many?", "1", ["1", "1", "one", "2", "2"] + ["3"] * 5), ("color?", "blue", ["blue"] * 10)],
    )
    assert majority_answer(support) == "1"
    questions = load_split(held_out)
    assert questions[0].image == held_out / "images" / "shapes_val_000000000000.png"
    # Always "1": with "one" normalised 3 annotators agree (1.0), then 0 on "blue".
    result = score(["2", "Blue."], questions, majority_answer(support))
    assert result.baseline == pytest.approx(0.5)
    assert result.accuracy == pytest.approx((2 / 3 + 1.0) / 2)
    assert result.n == 2


def test_sampling_is_seeded_and_capped():
    qs = [VQAQuestion(i, "q?", f"{i}.png", ("a",), "a") for i in range(50)]
    assert sample_questions(qs, 10, 3) == sample_questions(qs, 10, 3)
    assert len(sample_questions(qs, 500, 0)) == 50
