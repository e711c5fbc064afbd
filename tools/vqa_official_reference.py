"""Runs the official VQA evaluation code, loaded from a local copy, to record reference fixtures.

The official code is not vendored here. Get PythonEvaluationTools/vqaEvaluation/vqaEval.py from
the GT-Vision-Lab/VQA repository (the fixtures were recorded from commit OFFICIAL_COMMIT, whose
file has the SHA-256 OFFICIAL_SHA256; that file is Python 3 compatible) and pass its path. The
repository has no licence file, which is one more reason to keep it out of this tree.

Everything below only feeds data to the official class and reads its results: the normalisation
is the official processPunctuation()/processDigitArticle(), the accuracy the official evaluate()
loop, so the recorded values never come from vilaray's re-implementation.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

OFFICIAL_REPO = "GT-Vision-Lab/VQA"
OFFICIAL_PATH = "PythonEvaluationTools/vqaEvaluation/vqaEval.py"
OFFICIAL_COMMIT = "c4e6a0e4e84b9702d99800d3393652d92b5df224"
OFFICIAL_SHA256 = "36be8a8587ebdcc3cada12793aff0bf2a1c6a3a9f7558eeb685efc29250aab10"


def load_official(path: Path) -> ModuleType:
    """Import vqaEval.py from `path`, refusing any file other than the pinned version."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != OFFICIAL_SHA256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, expected {OFFICIAL_SHA256} ({OFFICIAL_PATH}@{OFFICIAL_COMMIT})"
        )
    spec = importlib.util.spec_from_file_location("official_vqa_eval", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its regex literals use invalid escapes such as "\d"
        spec.loader.exec_module(module)
    return module


class _Annotations:
    """The subset of the official VQA helper class that VQAEval reads: `qa` and getQuesIds()."""

    def __init__(self, qa: dict[int, dict[str, Any]]) -> None:
        self.qa = qa

    def getQuesIds(self) -> list[int]:  # noqa: N802 - the official API's name
        return list(self.qa)


def _evaluator(module: ModuleType, prediction: str, answers: list[str]) -> Any:
    question_id = 1
    # Shaped like the official annotation files: answer_id makes each annotator's dict distinct,
    # which the official leave-one-out (`item != gtAnsDatum`) relies on.
    gts = {
        question_id: {
            "question_id": question_id,
            "question_type": "none of the above",
            "answer_type": "other",
            "answers": [
                {"answer": answer, "answer_confidence": "yes", "answer_id": index + 1}
                for index, answer in enumerate(answers)
            ],
        }
    }
    res = {question_id: {"question_id": question_id, "answer": prediction}}

    class Capturing(module.VQAEval):  # type: ignore[name-defined, misc]
        """Keeps the unrounded per-question accuracy the official loop hands to setEvalQA()."""

        def setEvalQA(self, quesId: int, acc: float) -> None:  # noqa: N802, N803 - official names
            super().setEvalQA(quesId, acc)
            self.unrounded = acc

    return Capturing(_Annotations(gts), _Annotations(res), n=2)


def official_accuracy(module: ModuleType, prediction: str, answers: list[str]) -> float:
    """Per-question accuracy from the official evaluate() on a one-question dataset."""
    evaluator = _evaluator(module, prediction, answers)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator.evaluate()
    return float(evaluator.unrounded)


def official_normalize(module: ModuleType, text: str) -> str:
    """The prediction normalisation of the official evaluate(): the same calls in the same order."""
    evaluator = _evaluator(module, text, ["unused"])
    answer = text.replace("\n", " ").replace("\t", " ").strip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(evaluator.processDigitArticle(evaluator.processPunctuation(answer)))


def official_tables(module: ModuleType) -> dict[str, Any]:
    """The official lookup tables, recorded so tests can check vilaray's transcription."""
    evaluator = _evaluator(module, "", ["unused"])
    return {
        "contractions": dict(evaluator.contractions),
        "manualMap": dict(evaluator.manualMap),
        "articles": list(evaluator.articles),
        "punct": list(evaluator.punct),
        "periodStrip": evaluator.periodStrip.pattern,
        "commaStrip": evaluator.commaStrip.pattern,
    }
