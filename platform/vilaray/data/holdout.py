"""Which samples are held out of training for validation: a stable hash of the sample id, not a file split."""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def held_out(sample_id: str, fraction: float) -> bool:
    """True for about `fraction` of ids; the same id always lands on the same side, on any worker, in any
    epoch or stage, so validation documents never leak into training however the data is re-read."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(sample_id.encode(), digest_size=8, person=b"vilaray-holdout").digest()
    return int.from_bytes(digest, "little") / _SCALE < fraction
