"""The MFU formula's FLOP count on a small model, against hand-counted parameters and document lengths."""

from __future__ import annotations

import torch


def test_document_lengths_from_position_ids():
    from vilaray.train.flops import sum_doc_len_sq

    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert sum_doc_len_sq(pos) == (9 + 4 + 1) + 36


def test_step_flops_follow_the_formula(assets_dir):
    from vilaray.model.build import load_vlm
    from vilaray.model.freeze import apply_schedule
    from vilaray.model.spec import ComponentSchedule, FreezeSchedule
    from vilaray.train.flops import FlopModel

    model = load_vlm(assets_dir).model
    n = {
        c: sum(p.numel() for p in getattr(model, c).parameters())
        for c in ("vision_tower", "projector", "language_model")
    }
    cfg = model.language_model.config
    attn = 6 * cfg.num_hidden_layers * cfg.hidden_size * 50

    # Stage 1: projector trains, LM frozen but gradients flow through it, tower forward only.
    apply_schedule(model, FreezeSchedule())
    fm = FlopModel.of(model)
    expect = 4 * n["language_model"] * 100 + 6 * n["projector"] * 10 + 2 * n["vision_tower"] * 20 + attn
    assert fm.step_flops(100, 10, 20, 50) == expect

    # Stage 2: projector and LM train.
    model = load_vlm(assets_dir).model
    apply_schedule(model, FreezeSchedule(language_model=ComponentSchedule(mode="full")))
    fm = FlopModel.of(model)
    expect = 6 * n["language_model"] * 100 + 6 * n["projector"] * 10 + 2 * n["vision_tower"] * 20 + attn
    assert fm.step_flops(100, 10, 20, 50) == expect
