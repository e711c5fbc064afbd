"""Evaluation metrics with the official semantics: VQA accuracy, CIDEr-D on raw captions, exact match, MC."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from vilaray.evals.cider import cider_d_tokenized, corpus_mean
from vilaray.evals.ptb import ptb_tokenize, ptb_tokenize_lines
from vilaray.evals.vqa_normalize import normalize_vqa_answer, process_question

__all__ = [
    "cider_d",
    "cider_d_scores",
    "exact_match",
    "multiple_choice_loglik",
    "normalize_exact_match",
    "normalize_vqa_answer",
    "ptb_tokenize",
    "vqa_accuracy",
]

ImageId = TypeVar("ImageId", bound=Hashable)

# The official metric: an answer is fully right once 3 annotators gave it.
_VQA_AGREEMENT = 3


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the annotators' answers, as the official evaluate() computes
    it (GT-Vision-Lab/VQA main; the processing is `process_question`).

    For each annotator, the prediction scores min(#matching other annotators / 3, 1); the result is the
    mean over annotators: with VQA's 10 answers, the mean over the ten 9-answer subsets. Any other number
    of answers is averaged the same way (one answer can therefore never score: it has no "others").
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer, got an empty list")
    predicted, references = process_question(prediction, answers)
    per_annotator = []
    for left_out in range(len(references)):
        matches = sum(1 for index, ref in enumerate(references) if index != left_out and ref == predicted)
        per_annotator.append(min(1, float(matches) / _VQA_AGREEMENT))
    return float(sum(per_annotator)) / len(per_annotator)


def normalize_exact_match(text: str) -> str:
    """Light normalisation for exact match: lower case, white space collapsed and trimmed; nothing else."""
    return " ".join(text.lower().split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised answer, else 0.0 (empty predictions: 0.0)."""
    if not answers:
        raise ValueError("exact_match needs at least one reference answer, got an empty list")
    predicted = normalize_exact_match(prediction)
    if not predicted:
        return 0.0
    return float(any(predicted == normalize_exact_match(answer) for answer in answers))


def _score_for_choice(loglik: float, length: int | None) -> float:
    if math.isnan(loglik):
        return -math.inf
    return loglik if length is None else loglik / length


def multiple_choice_loglik(
    choice_logliks: Sequence[float], gold: int, lengths: Sequence[int] | None = None
) -> float:
    """1.0 if the highest-scoring choice is `gold`, else 0.0.

    Choices are scored by their total log-likelihood, or, with `lengths` (e.g. each choice's token
    or byte count), by log-likelihood per unit of length, the usual length-normalised variant.
    Ties go to the lowest index, so a model that scores every choice alike is right only when the
    gold answer is the first choice. NaN scores never win.
    """
    if not choice_logliks:
        raise ValueError("multiple_choice_loglik needs at least one choice")
    if not 0 <= gold < len(choice_logliks):
        raise ValueError(f"gold index {gold} is out of range for {len(choice_logliks)} choices")
    if lengths is not None:
        if len(lengths) != len(choice_logliks):
            raise ValueError(f"{len(lengths)} lengths for {len(choice_logliks)} choices")
        if any(length <= 0 for length in lengths):
            raise ValueError("choice lengths must be positive")
    scores = [
        _score_for_choice(loglik, None if lengths is None else lengths[index])
        for index, loglik in enumerate(choice_logliks)
    ]
    best = max(range(len(scores)), key=lambda index: (scores[index], -index))
    return float(best == gold)


def _describe(ids: Sequence[Hashable], limit: int = 10) -> str:
    shown = ", ".join(repr(key) for key in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _check_ids(predictions: Mapping[ImageId, str], references: Mapping[ImageId, Sequence[str]]) -> None:
    missing = [key for key in predictions if key not in references]
    if missing:
        raise ValueError(f"predictions without references: {_describe(missing)}")
    unpredicted = [key for key in references if key not in predictions]
    if unpredicted:
        raise ValueError(f"references without predictions: {_describe(unpredicted)}")
    empty = [key for key in predictions if len(references[key]) == 0]
    if empty:
        raise ValueError(f"images with an empty reference list: {_describe(empty)}")
    if not predictions:
        raise ValueError("cider_d needs at least one prediction")


def cider_d_scores(
    predictions: Mapping[ImageId, str],
    references: Mapping[ImageId, Sequence[str]],
    *,
    tokenize: bool = True,
) -> tuple[float, dict[ImageId, float]]:
    """Corpus CIDEr-D and per-image scores of raw captions, as pycocoevalcap computes them.

    Equivalent to PTBTokenizer().tokenize() of the references and of the predictions (two streams,
    in the order of `predictions`, each image's references in list order), then
    Cider().compute_score(gts, res) of pycocoevalcap 1.2 (which is CIDEr-D: sigma 6, clipped
    tf-idf, log(#images) as idf base, document frequencies from the references, x10, mean over
    images). The value is on pycocoevalcap's scale; papers print it x100 (0.85 -> "85.0").

    Predictions and references must cover the same ids; a prediction without references raises
    ValueError naming the ids. An empty prediction scores 0 for its image. tokenize=False takes
    captions that are already tokenised (space-separated, lower-cased, punctuation removed).
    """
    _check_ids(predictions, references)
    ids = list(predictions)
    if tokenize:
        flat_refs = ptb_tokenize_lines([ref for key in ids for ref in references[key]])
        candidates = ptb_tokenize_lines([predictions[key] for key in ids])
    else:
        flat_refs = [ref for key in ids for ref in references[key]]
        candidates = [predictions[key] for key in ids]
    grouped: list[list[str]] = []
    offset = 0
    for key in ids:
        grouped.append(flat_refs[offset : offset + len(references[key])])
        offset += len(references[key])
    per_image = dict(zip(ids, cider_d_tokenized(candidates, grouped), strict=True))
    return corpus_mean(per_image), per_image


def cider_d(
    predictions: Mapping[ImageId, str], references: Mapping[ImageId, Sequence[str]], *, tokenize: bool = True
) -> float:
    """Corpus CIDEr-D of raw captions on pycocoevalcap's scale (x100 for papers); see cider_d_scores."""
    return cider_d_scores(predictions, references, tokenize=tokenize)[0]
