"""Collate training rows (numpy batches from Ray Data) into the model's tensors."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vilaray.data.tokenize import IGNORE


def pad_rows(arrays: list[np.ndarray], length: int, fill: int | None) -> np.ndarray:
    """Right-pad rows to `length` with `fill`."""
    out = np.empty((len(arrays), length), dtype=np.int64)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
        tail = length - len(a)
        # fill=None: the tail's positions restart at 0 so it is a separate, loss-free segment.
        out[i, len(a) :] = np.arange(tail) if fill is None else fill
    return out


def collate_rows(batch: dict[str, np.ndarray], pad_id: int, image_size: int) -> dict[str, Any]:
    """Rows -> `input_ids`, `labels`, `position_ids` [B, T] (T = longest row), `pixel_values` uint8
    [N_images, H, W, 3] in row order (normalised on the device), `image_counts` [B], plus provenance."""
    ids = list(batch["input_ids"])
    length = max(len(a) for a in ids)
    images = [img for row in batch["images"] for img in row]
    pixels = np.frombuffer(b"".join(images), dtype=np.uint8).reshape(len(images), image_size, image_size, 3)
    return {
        "input_ids": torch.from_numpy(pad_rows(ids, length, pad_id)),
        "labels": torch.from_numpy(pad_rows(list(batch["labels"]), length, IGNORE)),
        "position_ids": torch.from_numpy(pad_rows(list(batch["position_ids"]), length, None)),
        "pixel_values": torch.from_numpy(pixels.copy()),
        "image_counts": torch.tensor([len(r) for r in batch["images"]], dtype=torch.int64),
        "num_tokens": torch.as_tensor(np.asarray(batch["num_tokens"], dtype=np.int64)),
        "num_loss_tokens": torch.as_tensor(np.asarray(batch["num_loss_tokens"], dtype=np.int64)),
        "sources": [str(s) for s in batch["source"]],
        "sample_ids": [list(s) for s in batch["sample_ids"]],
    }
