"""The VLM (tower + projector + LM) against transformers' LLaVA, freezing schedules (frozen / full / LoRA /
last_k) under real optimizer steps, the placeholder checks, the schema, and the meta-device dry run."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer
from pydantic import ValidationError
from vilaray.model.build import build_model, load_vlm
from vilaray.model.freeze import apply_schedule, param_groups
from vilaray.model.inputs import pixels_to_model, shifted_token_losses
from vilaray.model.meta import build_on_meta
from vilaray.model.spec import ComponentSchedule, FreezeSchedule, ModelSpec
from vilaray.model.vlm import ImageTokenMismatch, keeps_logits_by_mask

TEXT = "a red circle above a small blue square"


def make_batch(model, tokenizer, images_per_row=(1, 2), seed=0) -> dict:
    """Packed-style rows: each row holds two samples (positions restart at 0), `n` images in the first."""
    g = torch.Generator().manual_seed(seed)
    text = tokenizer(TEXT)["input_ids"]
    img = [model.image_token_id] * model.tokens_per_image
    rows = []
    for n in images_per_row:
        first = text[:3] + img * n + text
        rows.append((first, text + [tokenizer.eos_token_id]))
    length = max(len(a) + len(b) for a, b in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    pos = torch.zeros_like(ids)
    for r, (a, b) in enumerate(rows):
        ids[r, : len(a) + len(b)] = torch.tensor(a + b)
        pos[r, : len(a)] = torch.arange(len(a))
        pos[r, len(a) :] = torch.arange(length - len(a))
    labels = ids.clone()
    labels[(ids == model.image_token_id) | (ids == tokenizer.pad_token_id)] = -100
    n_images = sum(images_per_row)
    pixels = torch.randint(
        0, 256, (n_images, model.image_size, model.image_size, 3), generator=g, dtype=torch.uint8
    )
    return {
        "input_ids": ids,
        "position_ids": pos,
        "pixel_values": pixels,
        "image_counts": torch.tensor(images_per_row),
        "labels": labels,
    }


def without_labels(batch: dict) -> dict:
    """The model's inputs alone: given labels, the forward returns token losses instead of logits."""
    return {k: v for k, v in batch.items() if k != "labels"}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train_steps(model, schedule, batch, steps=2):
    opt = torch.optim.AdamW(param_groups(model, schedule, base_lr=1e-2, weight_decay=0.01))
    model.train()
    for _ in range(steps):
        out = model(**batch)
        valid = batch["labels"][:, 1:] != -100
        loss = out.token_losses.sum() / valid.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


# ---- the VLM against transformers' LLaVA -----------------------------------------------------------------


def test_logits_match_llava(assets_dir, tokenizer):
    from transformers import AutoModelForImageTextToText

    model, _ = load_vlm(assets_dir)
    ref = AutoModelForImageTextToText.from_pretrained(str(assets_dir), dtype=torch.float32).eval()
    model.eval()
    batch = make_batch(model, tokenizer, images_per_row=(2, 1))
    pixels = pixels_to_model(batch["pixel_values"], [0.5] * 3, [0.5] * 3, torch.float32)
    with torch.no_grad():
        ours = model(**without_labels(batch)).logits
        theirs = ref(
            input_ids=batch["input_ids"],
            pixel_values=pixels,
            position_ids=batch["position_ids"],
            use_cache=False,
        ).logits
    assert model.projector_name == "mlp2x_gelu" and model.tokens_per_image == 64
    # The assets' LM is trained (logits up to ~20): the two paths sum in different orders in float32.
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_placeholder_image_mismatch_is_refused(assets_dir, tokenizer):
    model, _ = load_vlm(assets_dir)
    batch = make_batch(model, tokenizer, images_per_row=(1, 1))
    with pytest.raises(ImageTokenMismatch, match=r"128 image placeholder tokens .* 1 images x 64 tokens"):
        model(**{**batch, "pixel_values": batch["pixel_values"][:1], "image_counts": None})
    # Right total, wrong rows: image_counts says row 0 holds both images.
    with pytest.raises(ImageTokenMismatch, match="row 0 has 64 image placeholder tokens"):
        model(**{**batch, "image_counts": torch.tensor([2, 0])})
    with pytest.raises(ImageTokenMismatch, match="no images"):
        model(**{**batch, "pixel_values": None})


def test_text_only_batch_still_runs_the_tower(assets_dir, tokenizer):
    """ZeRO-3 safety: without images the tower and projector still run (zero-weighted), so every rank runs
    the same modules; the logits are those of the plain text forward."""
    model, _ = load_vlm(assets_dir)
    apply_schedule(model, FreezeSchedule(language_model=ComponentSchedule(mode="full")))
    batch = make_batch(model, tokenizer, images_per_row=(0, 0))
    batch["pixel_values"] = batch["pixel_values"][:0]
    out = model(**batch)
    out.token_losses.sum().backward()
    grads = [p.grad for p in model.projector.parameters()]
    assert all(g is not None and not g.abs().any() for g in grads)
    inputs = without_labels(batch)
    with torch.no_grad():
        plain = model(**batch, run_vision_always=False).token_losses
        logits, plain_logits = (model(**inputs, run_vision_always=always).logits for always in (True, False))
    torch.testing.assert_close(out.token_losses.detach(), plain, atol=0, rtol=0)
    torch.testing.assert_close(logits, plain_logits, atol=0, rtol=0)


def test_loss_from_loss_positions_only_equals_the_full_logits_loss(assets_dir, tokenizer):
    """Given labels, the LM head runs on the loss-bearing positions only; the token losses and every
    gradient are those of the loss over the full [B, T, V] logits."""
    model, _ = load_vlm(assets_dir)
    apply_schedule(model, FreezeSchedule(language_model=ComponentSchedule(mode="full")))
    assert keeps_logits_by_mask(type(model.language_model))
    batch = make_batch(model, tokenizer)
    inputs = without_labels(batch)
    out = model(**batch)
    assert out.logits is None
    out.token_losses.sum().backward()
    selective = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    full = shifted_token_losses(model(**inputs).logits, batch["labels"])
    full.sum().backward()
    torch.testing.assert_close(out.token_losses.detach(), full.detach(), atol=1e-6, rtol=1e-5)
    assert (out.token_losses[batch["labels"][:, 1:] == -100] == 0).all()
    assert selective and selective.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in selective.items():
        # Float32 summation order differs between the two heads: tolerance relative to the largest entry.
        ref = dict(model.named_parameters())[name].grad
        torch.testing.assert_close(grad, ref, atol=max(1e-6, 1e-3 * float(ref.abs().max())), rtol=1e-3)


# ---- freezing, LoRA, last_k ------------------------------------------------------------------------------

STAGE2 = FreezeSchedule(
    vision_tower=ComponentSchedule(mode="last_k", k=1),
    projector=ComponentSchedule(mode="full", lr=2e-2),
    language_model=ComponentSchedule(mode="lora", r=4, alpha=8),
)


def test_frozen_params_bit_identical_trainable_ones_move(assets_dir, tokenizer):
    model, _ = load_vlm(assets_dir)
    rows = apply_schedule(model, STAGE2)
    assert [r.mode for r in rows] == ["last_k", "full", "lora"]
    assert all(0 < r.trainable < r.total for r in (rows[0], rows[2])) and rows[1].trainable == rows[1].total
    before = snapshot(model)
    train_steps(model, STAGE2, make_batch(model, tokenizer))
    after = snapshot(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "schedule trains nothing"
    for name in before:
        if name in trainable:
            assert not torch.equal(before[name], after[name]), f"{name} trainable but unchanged"
        else:
            assert torch.equal(before[name], after[name]), f"{name} frozen but changed"


def test_every_trainable_param_gets_a_gradient(assets_dir, tokenizer):
    """`full` leaves the tower parts the features never reach (SigLIP head, post-layernorm) frozen:
    DeepSpeed would otherwise hold optimizer state for parameters that never receive a gradient."""
    model, _ = load_vlm(assets_dir)
    full = ComponentSchedule(mode="full")
    apply_schedule(model, FreezeSchedule(vision_tower=full, projector=full, language_model=full))
    model(**make_batch(model, tokenizer)).token_losses.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"post_layernorm", "head"}


def lora_names(module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, LoraLayer)]


def test_lora_only_on_the_named_component(assets_dir):
    model, _ = load_vlm(assets_dir)
    apply_schedule(model, FreezeSchedule(language_model=ComponentSchedule(mode="lora", r=4)))
    assert not lora_names(model.vision_tower) and not lora_names(model.projector)
    assert len(lora_names(model.language_model)) == 4 * 7  # q k v o gate up down per layer
    assert not any("lora_" in n for n, _ in model.vision_tower.named_parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith("projector.") or "lora_" in n for n in trainable)

    model, _ = load_vlm(assets_dir)
    apply_schedule(
        model, FreezeSchedule(vision_tower=ComponentSchedule(mode="lora", r=4, targets=["q_proj", "fc1"]))
    )
    assert not lora_names(model.language_model) and not any(
        "lora_" in n for n, _ in model.language_model.named_parameters()
    )
    wrapped = lora_names(model.vision_tower)
    # Both encoder layers, never the pooling head (its mlp.fc1 also matches `fc1`, but no feature reaches it).
    assert sorted(wrapped) == [
        "encoder.layers.0.mlp.fc1",
        "encoder.layers.0.self_attn.q_proj",
        "encoder.layers.1.mlp.fc1",
        "encoder.layers.1.self_attn.q_proj",
    ]
    with pytest.raises(ValueError, match="match no linear layer"):
        apply_schedule(
            load_vlm(assets_dir).model,
            FreezeSchedule(language_model=ComponentSchedule(mode="lora", targets=["qkv"])),
        )


def test_last_k_trains_only_the_last_layers(assets_dir):
    model, _ = load_vlm(assets_dir)
    apply_schedule(model, FreezeSchedule(vision_tower=ComponentSchedule(mode="last_k", k=1)))
    tower = {n for n, p in model.vision_tower.named_parameters() if p.requires_grad}
    assert tower and all(n.startswith("encoder.layers.1.") for n in tower)
    assert tower == {
        n for n, _ in model.vision_tower.encoder.layers[1].named_parameters(prefix="encoder.layers.1")
    }

    # With the penultimate layer feeding the projector, the last layer is dead: "last 1" is layer 0.
    model, _ = load_vlm(assets_dir, vision_feature_layer=-2)
    apply_schedule(model, FreezeSchedule(vision_tower=ComponentSchedule(mode="last_k", k=1)))
    assert {n.split(".")[2] for n, p in model.vision_tower.named_parameters() if p.requires_grad} == {"0"}
    with pytest.raises(ValueError, match="only 1 encoder layers feed the projector"):
        apply_schedule(
            load_vlm(assets_dir, vision_feature_layer=-2).model,
            FreezeSchedule(vision_tower=ComponentSchedule(mode="last_k", k=2)),
        )


def test_param_groups_hold_trainable_params_with_component_lrs(assets_dir):
    model, _ = load_vlm(assets_dir)
    apply_schedule(model, STAGE2)
    groups = param_groups(model, STAGE2, base_lr=1e-3, weight_decay=0.1)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {
        "vision_tower",
        "vision_tower/no_decay",
        "projector",
        "projector/no_decay",
        "language_model",
    }
    assert by_name["projector"]["lr"] == 2e-2 and by_name["language_model"]["lr"] == 1e-3
    assert (
        by_name["projector/no_decay"]["weight_decay"] == 0.0 and by_name["projector"]["weight_decay"] == 0.1
    )
    grouped = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in grouped}) == len(grouped)
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}


# ---- schema --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"vision_tower": {"mode": "last_k"}}, "last_k needs k"),
        ({"language_model": {"mode": "last_k", "k": 2}}, "language_model: mode last_k is not allowed"),
        ({"projector": {"mode": "lora"}}, "projector: mode lora is not allowed"),
        ({"language_model": {"mode": "full", "r": 8}}, "r only apply to mode lora"),
        ({"vision_tower": {"mode": "full", "k": 2}}, "k only applies to mode last_k"),
        ({"projector": {"mode": "frozen"}}, "nothing would train"),
        ({"language_model": {"mode": "full", "rank": 8}}, "Extra inputs are not permitted"),
    ],
)
def test_schedule_validation(raw, message):
    with pytest.raises(ValidationError, match=message):
        FreezeSchedule.model_validate(raw)


def test_model_spec_validation():
    with pytest.raises(ValidationError, match="not both"):
        ModelSpec(path="x", llm={"path": "y"})
    with pytest.raises(ValidationError, match="needs a projector"):
        ModelSpec(vision={"path": "v"}, llm={"path": "l"})
    with pytest.raises(ValidationError, match="unknown projector"):
        ModelSpec(path="x", projector="transformer")
    with pytest.raises(ValidationError, match="exactly one of path or config"):
        ModelSpec(
            vision={"path": "v", "config": {"model_type": "siglip_vision_model"}},
            llm={"path": "l"},
            projector="linear",
        )


# ---- meta-device dry run --------------------------------------------------------------------------------

SIGLIP_B16 = {
    "model_type": "siglip_vision_model",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 16,
}
QWEN2_05B = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}


def test_build_on_meta_counts_full_size_params():
    spec = ModelSpec(vision={"config": SIGLIP_B16}, llm={"config": QWEN2_05B}, projector="downsample2x2")
    model, report = build_on_meta(spec)
    assert next(model.parameters()).is_meta
    assert report.params["language_model"] == 494_032_768  # Qwen2-0.5B's published size
    assert report.params["projector"] == (4 * 768 * 2) + (4 * 768 * 896 + 896) + (896 * 896 + 896)
    assert 85e6 < report.params["vision_tower"] < 95e6
    assert (
        report.geometry.tokens_per_image == 49 and report.vision_hidden == 768 and report.text_hidden == 896
    )
    assert "494,032,768" in report.table()


def test_build_on_meta_refuses_a_projector_that_does_not_fit(tmp_path):
    from safetensors.torch import save_file

    # A stage-1 projector trained for a 1024-wide tower and a 4096-wide LLM.
    save_file(
        {
            "model.multi_modal_projector.linear_1.weight": torch.zeros(4096, 1024),
            "model.multi_modal_projector.linear_1.bias": torch.zeros(4096),
            "model.multi_modal_projector.linear_2.weight": torch.zeros(4096, 4096),
            "model.multi_modal_projector.linear_2.bias": torch.zeros(4096),
        },
        str(tmp_path / "projector.safetensors"),
    )
    spec = ModelSpec(
        vision={"config": SIGLIP_B16},
        llm={"config": QWEN2_05B},
        projector="mlp2x_gelu",
        projector_weights=str(tmp_path / "projector.safetensors"),
    )
    with pytest.raises(
        ValueError, match=r"shape \[4096, 1024\] .* hidden size 768 .* hidden size 896 need \[896, 768\]"
    ):
        build_on_meta(spec)


def test_build_from_separate_tower_and_llm(tmp_path, tokenizer):
    """A dual-encoder SigLIP checkpoint (vision half taken) + a causal LM checkpoint + a fresh projector."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipConfig, SiglipModel

    vision = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    siglip = SiglipModel(
        SiglipConfig(
            vision_config=vision,
            text_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
            },
        )
    )
    siglip.save_pretrained(str(tmp_path / "siglip"))
    lm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    lm.save_pretrained(str(tmp_path / "lm"))
    tokenizer.save_pretrained(str(tmp_path / "lm"))
    spec = ModelSpec(
        vision={"path": str(tmp_path / "siglip")}, llm={"path": str(tmp_path / "lm")}, projector="linear"
    )
    model, tok = build_model(spec)
    assert model.feature_layer == -2 and model.tokens_per_image == 16 and model.image_mean == [0.5] * 3
    torch.testing.assert_close(
        model.vision_tower.embeddings.patch_embedding.weight,
        siglip.vision_model.embeddings.patch_embedding.weight,
    )
    torch.testing.assert_close(model.language_model.lm_head.weight, lm.lm_head.weight)
    batch = make_batch(model, tok, images_per_row=(1, 0))
    assert model(**without_labels(batch)).logits.shape[-1] == len(tok)
