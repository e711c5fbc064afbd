"""CIDEr-D on tokenised captions, reproducing pycocoevalcap's CiderScorer arithmetic (n=4, sigma=6)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NGRAM_ORDER = 4
SIGMA = 6.0

Ngram = tuple[str, ...]


def ngram_counts(sentence: str, order: int = NGRAM_ORDER) -> dict[Ngram, int]:
    """Counts of every 1..order-gram of a whitespace-tokenised sentence (pycocoevalcap's precook)."""
    words = sentence.split()
    counts: dict[Ngram, int] = defaultdict(int)
    for n in range(1, order + 1):
        for start in range(len(words) - n + 1):
            counts[tuple(words[start : start + n])] += 1
    return dict(counts)


def document_frequency(references: Sequence[Sequence[dict[Ngram, int]]]) -> dict[Ngram, float]:
    """In how many images' reference sets each n-gram occurs (the candidates do not count)."""
    frequency: dict[Ngram, float] = defaultdict(float)
    for image_refs in references:
        for ngram in {ngram for ref in image_refs for ngram in ref}:
            frequency[ngram] += 1
    return dict(frequency)


@dataclass(frozen=True)
class _TfIdf:
    vectors: tuple[dict[Ngram, float], ...]  # one per n-gram order
    norms: tuple[float, ...]
    length: int


def _tfidf(counts: dict[Ngram, int], frequency: dict[Ngram, float], log_images: float) -> _TfIdf:
    vectors: list[dict[Ngram, float]] = [{} for _ in range(NGRAM_ORDER)]
    squares = [0.0] * NGRAM_ORDER
    length = 0
    for ngram, term_frequency in counts.items():
        # An n-gram absent from every reference set gets df 1, i.e. the full idf log(N).
        idf_log = math.log(max(1.0, frequency.get(ngram, 0.0)))
        order = len(ngram) - 1
        weight = float(term_frequency) * (log_images - idf_log)
        vectors[order][ngram] = weight
        squares[order] += pow(weight, 2)
        # pycocoevalcap's "length" is the number of bigrams (its `n == 1` tests the 0-based
        # order), not of words; the length penalty below uses it that way, and so do we.
        if order == 1:
            length += term_frequency
    return _TfIdf(tuple(vectors), tuple(math.sqrt(square) for square in squares), length)


def _similarity(candidate: _TfIdf, reference: _TfIdf) -> list[float]:
    delta = float(candidate.length - reference.length)
    penalty = math.e ** (-(delta**2) / (2 * SIGMA**2))
    values = [0.0] * NGRAM_ORDER
    for order in range(NGRAM_ORDER):
        ref_vector = reference.vectors[order]
        for ngram, weight in candidate.vectors[order].items():
            ref_weight = ref_vector.get(ngram, 0.0)
            # CIDEr-D clipping: a candidate cannot gain by repeating an n-gram more than the reference.
            values[order] += min(weight, ref_weight) * ref_weight
        if candidate.norms[order] != 0 and reference.norms[order] != 0:
            values[order] /= candidate.norms[order] * reference.norms[order]
        values[order] *= penalty
    return values


def cider_d_tokenized(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per-image CIDEr-D of already tokenised captions, candidates[i] against references[i].

    The document frequencies, and log(number of images) as the idf base, come from this whole
    corpus, so a score depends on the other images too, exactly as in pycocoevalcap.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
    if not candidates:
        raise ValueError("CIDEr-D needs at least one image")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every image needs at least one reference caption")
    cooked_refs = [[ngram_counts(ref) for ref in refs] for refs in references]
    frequency = document_frequency(cooked_refs)
    log_images = math.log(float(len(cooked_refs)))
    scores = []
    for candidate, refs in zip(candidates, cooked_refs, strict=True):
        candidate_vec = _tfidf(ngram_counts(candidate), frequency, log_images)
        summed = [0.0] * NGRAM_ORDER
        for ref in refs:
            for order, value in enumerate(_similarity(candidate_vec, _tfidf(ref, frequency, log_images))):
                summed[order] += value
        scores.append(sum(summed) / NGRAM_ORDER / len(refs) * 10.0)
    return scores


def consensus_indices(references: Sequence[Sequence[str]]) -> list[int]:
    """Per image, the index of the tokenised reference its other references agree with most (CIDEr-D of it
    against them, document frequencies from all these images); the first on ties or a lone reference."""
    if not references:
        return []
    cooked = [[ngram_counts(ref) for ref in refs] for refs in references]
    frequency = document_frequency(cooked)
    log_images = math.log(float(len(cooked)))
    best = []
    for refs in cooked:
        vecs = [_tfidf(ref, frequency, log_images) for ref in refs]
        agreement = [
            sum(sum(_similarity(v, w)) for k, w in enumerate(vecs) if k != j) for j, v in enumerate(vecs)
        ]
        best.append(max(range(len(vecs)), key=lambda j: (agreement[j], -j)))
    return best


def corpus_mean(scores: Mapping[str, float] | Sequence[float]) -> float:
    values = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
    return math.fsum(values) / len(values)
