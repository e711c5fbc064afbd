"""Format readers for every supported corpus layout, keyed by the recipe's `format` name."""

from __future__ import annotations

from vilaray.data.readers.base import Reader, Shard
from vilaray.registry import Registry

READERS: Registry[Reader] = Registry("format")


def register(cls: type[Reader]) -> type[Reader]:
    READERS.add(cls.format, cls())
    return cls


def get_reader(fmt: str) -> Reader:
    return READERS.get(fmt)


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
