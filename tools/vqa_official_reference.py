"""Runs the official VQA evaluation code, loaded from a local copy, to record reference fixtures.

The official code is not vendored here. Get PythonEvaluationTools/vqaEvaluation/vqaEval.py from
the GT-Vision-Lab/VQA repository's main branch (commit OFFICIAL_COMMIT, "Fixed processing answers bug",
whose file has the SHA-256 OFFICIAL_SHA256) and pass its path. That file is Python 2: the only change
made before running it is the print-only patch below (`print x` -> `print(x)`). The repository has no
licence file, which is one more reason to keep it out of this tree.

Everything below only feeds data to the official class and reads its results: the normalisation
is the official processPunctuation()/processDigitArticle(), the accuracy the official evaluate()
loop, so the recorded values never come from vilaray's re-implementation.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

OFFICIAL_REPO = "GT-Vision-Lab/VQA"
OFFICIAL_PATH = "PythonEvaluationTools/vqaEvaluation/vqaEval.py"
OFFICIAL_COMMIT = "a013f00"
OFFICIAL_SHA256 = "f08edfcad5be0112500993e245c706b6cb928eadebe203f89f838e5e0d04bec8"
# Python 2 print statements (`print "computing accuracy"`), the file's only Python-3 incompatibility.
_PRINT_STATEMENT = re.compile(r"^(\s*)print (?!\()(.*?)\s*$", re.MULTILINE)


def print_only_patch(source: str) -> str:
    """`print x` -> `print(x)`; nothing else in the official file is touched."""
    return _PRINT_STATEMENT.sub(r"\1print(\2)", source)


def load_official(path: Path) -> ModuleType:
    """Import vqaEval.py from `path` (print-only patched), refusing any file other than the pinned version."""
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != OFFICIAL_SHA256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, expected {OFFICIAL_SHA256} ({OFFICIAL_PATH}@{OFFICIAL_COMMIT})"
        )
    module = ModuleType("official_vqa_eval")
    module.__file__ = str(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its regex literals use invalid escapes such as "\d"
        exec(compile(print_only_patch(raw.decode("utf-8")), str(path), "exec"), module.__dict__)
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
