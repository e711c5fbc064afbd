"""vilaray.evals.metrics against values recorded from pycocoevalcap 1.2 and the official VQA code."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from vilaray.evals import ptb, vqa_normalize
from vilaray.evals.metrics import (
    cider_d,
    cider_d_scores,
    exact_match,
    multiple_choice_loglik,
    normalize_vqa_answer,
    ptb_tokenize,
    vqa_accuracy,
)
from vilaray.evals.ptb import ptb_tokenize_lines

# Recorded by tools/record_metric_fixtures.py from the reference implementations, never from vilaray.
FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
CIDER_TOLERANCE = 1e-6


@cache
def _fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _cases(name: str, key: str) -> list[dict[str, Any]]:
    return _fixture(name)[key]


def test_fixtures_name_their_reference() -> None:
    assert _fixture("ptb.json")["recorded_with"]["pycocoevalcap"] == "1.2"
    assert "java" in _fixture("cider.json")["recorded_with"]
    assert "GT-Vision-Lab/VQA" in _fixture("vqa.json")["recorded_with"]["source"]


# --- PTB tokenisation ---------------------------------------------------------------------------


def _ptb_cases(*, known_differences: bool) -> list[dict[str, str]]:
    cases = _cases("ptb.json", "cases")
    return [case for case in cases if (case["text"] in ptb.KNOWN_DIFFERENCES) == known_differences]


@pytest.mark.parametrize(
    "case", _ptb_cases(known_differences=False), ids=lambda case: repr(case["text"])[:40]
)
def test_ptb_tokenize_matches_corenlp(case: dict[str, str]) -> None:
    assert ptb_tokenize(case["text"]) == case["tokenized"]


def test_ptb_known_differences_are_recorded_and_still_differ() -> None:
    # ptb.py is an independent tokeniser: the few recorded inputs it does not reproduce are named,
    # with a reason, in ptb.KNOWN_DIFFERENCES rather than dropped; an entry that starts matching
    # CoreNLP must leave the list.
    known = _ptb_cases(known_differences=True)
    assert {case["text"] for case in known} == set(ptb.KNOWN_DIFFERENCES)
    for case in known:
        assert ptb_tokenize(case["text"]) != case["tokenized"], case["text"]


@pytest.mark.parametrize(
    "stream", _cases("ptb.json", "streams"), ids=lambda stream: repr(stream["texts"])[:40]
)
def test_ptb_stream_matches_one_corenlp_call(stream: dict[str, Any]) -> None:
    assert ptb_tokenize_lines(stream["texts"]) == stream["tokenized"]


def test_ptb_keeps_hyphenated_words_and_splits_contractions() -> None:
    assert ptb_tokenize("A black-and-white photo") == "a black-and-white photo"
    assert ptb_tokenize("don't it's") == "do n't it 's"


# --- CIDEr-D ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("cider.json", "cases"), ids=lambda case: case["name"])
def test_cider_d_matches_pycocoevalcap(case: dict[str, Any]) -> None:
    corpus, per_image = cider_d_scores(case["predictions"], case["references"])
    assert corpus == pytest.approx(case["corpus"], abs=CIDER_TOLERANCE)
    assert per_image.keys() == case["per_image"].keys()
    for image_id, expected in case["per_image"].items():
        assert per_image[image_id] == pytest.approx(expected, abs=CIDER_TOLERANCE), image_id
    assert cider_d(case["predictions"], case["references"]) == corpus


@pytest.mark.parametrize("case", _cases("cider.json", "cases"), ids=lambda case: case["name"])
def test_cider_d_on_pretokenized_captions(case: dict[str, Any]) -> None:
    corpus, _ = cider_d_scores(case["tokenized_predictions"], case["tokenized_references"], tokenize=False)
    assert corpus == pytest.approx(case["corpus"], abs=CIDER_TOLERANCE)


def test_cider_d_prefers_candidates_equal_to_references() -> None:
    references = {
        "1": ["a red bus on the street", "a red bus parked outside"],
        "2": ["a cat sleeping on a sofa", "a sleeping cat"],
        "3": ["two dogs playing in the snow", "dogs in the snow"],
    }
    copied = {key: refs[0] for key, refs in references.items()}
    unrelated = {"1": "purple elephants dancing", "2": "a plate of pasta", "3": "an airplane at night"}
    assert cider_d(copied, references) > cider_d(unrelated, references)


def test_cider_d_empty_prediction_scores_zero() -> None:
    references = {"1": ["a red bus"], "2": ["a black cat"]}
    _, per_image = cider_d_scores({"1": "", "2": "a black cat"}, references)
    assert per_image["1"] == 0.0


def test_cider_d_names_predictions_without_references() -> None:
    with pytest.raises(ValueError, match="'ghost'.*'phantom'|'phantom'.*'ghost'"):
        cider_d({"1": "a cat", "ghost": "a dog", "phantom": "a bird"}, {"1": ["a cat"]})


def test_cider_d_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        cider_d({}, {})
    with pytest.raises(ValueError, match="empty reference list"):
        cider_d({"1": "a cat"}, {"1": []})


# --- VQA ----------------------------------------------------------------------------------------


def test_vqa_tables_match_official() -> None:
    tables = _fixture("vqa.json")["tables"]
    assert dict(vqa_normalize.CONTRACTIONS) == tables["contractions"]
    assert dict(vqa_normalize.NUMBER_WORDS) == tables["manualMap"]
    assert sorted(vqa_normalize.ARTICLES) == sorted(tables["articles"])
    assert list(vqa_normalize.PUNCTUATION) == tables["punct"]


@pytest.mark.parametrize("case", _cases("vqa.json", "normalize"), ids=lambda case: repr(case["text"])[:30])
def test_normalize_vqa_answer_matches_official(case: dict[str, str]) -> None:
    assert normalize_vqa_answer(case["text"]) == case["normalized"]


@pytest.mark.parametrize(
    "case", _cases("vqa.json", "accuracy"), ids=lambda case: f"{case['prediction']!r}-{len(case['answers'])}"
)
def test_vqa_accuracy_matches_official(case: dict[str, Any]) -> None:
    assert vqa_accuracy(case["prediction"], case["answers"]) == pytest.approx(case["accuracy"], abs=1e-9)


def test_vqa_accuracy_matches_the_official_main_on_600_raw_cases() -> None:
    """600 raw-answer cases (mixed case, padding, articles, punctuation) scored by running the official
    vqaEval.py of GT-Vision-Lab/VQA main (commit a013f00): every one equal."""
    path = FIXTURES / "vqa_official_cases.jsonl"
    cases = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(cases) == 600
    wrong = [c for c in cases if abs(vqa_accuracy(c["prediction"], c["answers"]) - c["accuracy"]) > 1e-9]
    assert not wrong, wrong[:5]


def test_vqa_identical_answers_are_compared_as_written() -> None:
    """Official main processes answers and prediction only when the answers differ: against ten identical
    answers a prediction must equal them once cleaned (white space), not once normalised."""
    assert vqa_accuracy(" SQUARE\n", ["SQUARE"] * 10) == 1.0
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 9 + ["two"]) == 1.0  # they differ: both sides normalised


def test_vqa_accuracy_three_of_ten_is_the_leave_one_out_mean() -> None:
    # Leaving out one of the 3 matching annotators leaves 2 matches (2/3); leaving out one of the
    # 7 others leaves 3 (capped at 1): (3 * 2/3 + 7 * 1) / 10.
    assert vqa_accuracy("yes", ["yes"] * 3 + ["no"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)


def test_vqa_accuracy_edge_inputs() -> None:
    assert vqa_accuracy("", ["yes"] * 10) == 0.0
    assert vqa_accuracy("caf\u00e9", ["caf\u00e9"] * 4) == 1.0
    with pytest.raises(ValueError, match="at least one reference answer"):
        vqa_accuracy("yes", [])


# --- exact match and multiple choice ------------------------------------------------------------


def test_exact_match_normalises_lightly() -> None:
    assert exact_match("  The   Cat ", ["the cat"]) == 1.0
    assert exact_match("the cat.", ["the cat"]) == 0.0
    assert exact_match("", [""]) == 0.0
    assert exact_match("\u00c9t\u00e9", ["\u00e9t\u00e9"]) == 1.0
    with pytest.raises(ValueError):
        exact_match("x", [])


def test_multiple_choice_argmax_and_ties() -> None:
    assert multiple_choice_loglik([-3.0, -1.0, -2.0], gold=1) == 1.0
    assert multiple_choice_loglik([-1.0, -1.0], gold=0) == 1.0
    assert multiple_choice_loglik([-1.0, -1.0], gold=1) == 0.0
    assert multiple_choice_loglik([math.nan, -5.0], gold=1) == 1.0
    # Per-length scoring flips the choice when the longer answer is better per token.
    assert multiple_choice_loglik([-4.0, -6.0], gold=1, lengths=[2, 6]) == 1.0
    with pytest.raises(ValueError):
        multiple_choice_loglik([-1.0], gold=3)


def test_official_vqa_loader_patches_print_statements_only() -> None:
    """The pinned main vqaEval.py is Python 2; the recorder runs it after turning `print x` into
    `print(x)` and nothing else."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "vqa_ref", Path(__file__).parent.parent / "tools" / "vqa_official_reference.py"
    )
    assert spec is not None and spec.loader is not None
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    py2 = (
        'def f(acc):\n    print "computing accuracy"\n    x = "print me"\n    print("kept")\n    print acc\n'
    )
    patched = ref.print_only_patch(py2)
    assert patched.splitlines() == [
        "def f(acc):",
        '    print("computing accuracy")',
        '    x = "print me"',
        '    print("kept")',
        "    print(acc)",
    ]
    compile(patched, "vqaEval.py", "exec")
