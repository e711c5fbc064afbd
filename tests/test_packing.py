"""Packing correctness: the tiny model's per-sample loss is the same packed as unpacked (no cross-sample
attention, positions restart per sample), and windows pack to a high efficiency."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vilaray.data.collate import collate_rows
from vilaray.data.pack import PackConfig, build_row, pack_samples, single_rows
from vilaray.data.pipeline import encode_rows, iter_shard_samples
from vilaray.data.quarantine import LedgerClient, Quarantine
from vilaray.data.readers import get_reader
from vilaray.data.text_tokenizer import TextTokenizer
from vilaray.data.tokenize import EncodeConfig, SampleEncoder
from vilaray.model.geometry import read_geometry
from vilaray.model.inputs import per_sample_losses, pixels_to_model
from vilaray.model.packed_attention import PACKED_SDPA, packed_kwargs


def world_samples(world_dir, fmt: str, path: str, n: int) -> list[dict]:
    reader = get_reader(fmt)
    client = LedgerClient(Quarantine(None))
    out = []
    for shard in reader.plan(fmt, [str(world_dir / path)], None, {}):
        for s in iter_shard_samples(shard, client):
            out.append(s)
            if len(out) == n:
                return out
    return out


@pytest.fixture(scope="module")
def tokenized(world_dir, tokenizer, assets_dir):
    enc = SampleEncoder(TextTokenizer(assets_dir), read_geometry(assets_dir), EncodeConfig(384, 2, 10**8))
    samples = (
        world_samples(world_dir, "pairs_parquet", "pairs", 4)
        + world_samples(world_dir, "obelics_parquet", "obelics", 2)
        + world_samples(world_dir, "text_jsonl", "text", 3)
        + world_samples(world_dir, "messages_jsonl", "sft_messages", 3)
    )
    rows = encode_rows(enc, samples, LedgerClient(Quarantine(None)))
    assert len(rows) == len(samples)
    return rows


def forward_losses(model, rows: list[dict], pad_id: int) -> list[list[float]]:
    batch = {k: np.array([r[k] for r in rows] + [None], dtype=object)[:-1] for k in rows[0]}
    t = collate_rows(batch, pad_id, model.config.vision_config.image_size)
    pixels = pixels_to_model(t["pixel_values"], [0.5] * 3, [0.5] * 3, torch.float32)
    with torch.no_grad():
        out = model(
            input_ids=t["input_ids"],
            pixel_values=pixels if len(pixels) else None,
            position_ids=t["position_ids"],
            # A KV cache turns off transformers' packed-sequence detection; training never uses one.
            use_cache=False,
            **(packed_kwargs(t["position_ids"]) if model.config._attn_implementation == PACKED_SDPA else {}),
        )
    return per_sample_losses(out.logits, t["labels"], [list(r["seq_lens"]) for r in rows])


# sdpa gets a dense block-causal mask from transformers; flex_attention (the GPU recipes' choice) a
# BlockMask built from the same restarting position ids, with no dense mask; packed_sdpa (vilaray's CPU
# default) one SDPA call per document. All must isolate documents.
@pytest.mark.parametrize("attn", ["sdpa", "flex_attention", PACKED_SDPA])
def test_packed_loss_equals_unpacked(tokenized, tokenizer, assets_dir, attn):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(
        str(assets_dir), dtype=torch.float32, attn_implementation=attn
    ).eval()
    cfg = PackConfig(seq_len=768, max_images_per_row=4, pad_id=tokenizer.pad_token_id)
    packed = pack_samples(tokenized, cfg, np.random.default_rng(0))
    assert any(len(r["sample_ids"]) >= 2 for r in packed), "test needs rows holding several samples"

    if attn == "sdpa":  # packing off: one sample per row, unpadded, each its own forward
        alone = {
            row["sample_ids"][0]: forward_losses(model, [row], cfg.pad_id)[0][0]
            for row in single_rows(tokenized, cfg)
        }
        packed_losses = forward_losses(model, packed, cfg.pad_id)
    else:
        # Each sample alone in a row padded to seq_len (the pad tail comes after it, so causality alone
        # keeps it out of the sample's loss), in the same forward as the packed rows: flex_attention
        # compiles once per shape (a second shape recompiles it with dynamic shapes, as long again on a
        # CPU), and rows do not see each other. For packed_sdpa the pad tail is a document of its own.
        rows = [build_row([s], cfg, cfg.seq_len) for s in tokenized]
        both = forward_losses(model, rows + packed, cfg.pad_id)
        alone = {r["sample_ids"][0]: row_losses[0] for r, row_losses in zip(rows, both)}
        packed_losses = both[len(rows) :]
    compared = 0
    for row, losses in zip(packed, packed_losses):
        for sid, loss in zip(row["sample_ids"], losses):
            assert abs(loss - alone[sid]) < 1e-4, (sid, loss, alone[sid])
            compared += 1
    assert compared == len(tokenized)


def test_first_fit_decreasing_fills_rows(tokenized, tokenizer):
    cfg = PackConfig(seq_len=2048, max_images_per_row=32, pad_id=tokenizer.pad_token_id)
    many = [dict(r, id=f"{r['id']}#{k}") for k in range(40) for r in tokenized]
    rows = pack_samples(many, cfg, np.random.default_rng(1))
    assert all(r["num_tokens"] <= 2048 and len(r["images"]) <= 32 for r in rows)
    assert sorted(s for r in rows for s in r["sample_ids"]) == sorted(s["id"] for s in many)
    eff = sum(r["num_tokens"] for r in rows) / (len(rows) * 2048)
    assert eff > 0.9
