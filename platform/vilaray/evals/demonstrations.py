"""Which reference a k-shot demonstration shows as its reply: the split's first, or its references' consensus."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from vilaray.evals.tasks import EvalSample
from vilaray.registry import Registry


def first(samples: list[EvalSample]) -> list[EvalSample]:
    """As loaded: a VQA sample's annotators' majority answer, a caption's first reference (OpenFlamingo's)."""
    return samples


def consensus(samples: list[EvalSample]) -> list[EvalSample]:
    """Each caption shows the reference its other references agree with most by CIDEr-D (document
    frequencies from the whole split), as a VQA demonstration shows the annotators' majority answer: the
    dataset's own style, not whichever annotator happened to be listed first."""
    from vilaray.evals.cider import consensus_indices
    from vilaray.evals.ptb import ptb_tokenize_lines

    flat = ptb_tokenize_lines([ref for s in samples for ref in s.references])
    tokenised, at = [], 0
    for s in samples:
        tokenised.append(flat[at : at + len(s.references)])
        at += len(s.references)
    picks = consensus_indices(tokenised)
    return [replace(s, answer=s.references[j]) for s, j in zip(samples, picks, strict=True)]


DEMONSTRATIONS: Registry[Callable[[list[EvalSample]], list[EvalSample]]] = Registry(
    "demonstration", {"first": first, "consensus": consensus}
)
