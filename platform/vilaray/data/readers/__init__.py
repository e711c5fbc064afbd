"""Format readers for every supported corpus layout, keyed by the recipe's `format` name."""

from __future__ import annotations

from vilaray.data.readers.base import Reader, Shard

READERS: dict[str, Reader] = {}


def register(cls: type[Reader]) -> type[Reader]:
    READERS[cls.format] = cls()
    return cls


def get_reader(fmt: str) -> Reader:
    try:
        return READERS[fmt]
    except KeyError:
        raise KeyError(f"unknown format {fmt!r}; expected one of {sorted(READERS)}") from None


# Format modules register themselves on import.
from vilaray.data.readers import (  # noqa: E402,F401
    llava,
    messages,
    mmc4,
    obelics,
    pairs,
    text,
    webdataset,
)

__all__ = ["READERS", "Reader", "Shard", "get_reader", "register"]
