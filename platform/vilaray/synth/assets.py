"""Tiny assets built locally: a byte-level BPE tokenizer trained on the world's text and a tiny VLM from config."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

IMAGE_TOKEN = "<image>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]

# ChatML. Image parts render as one placeholder; the data pipeline (and the processor) expand it to the
# projector's token count. Prefix-stable by construction: rendering messages[:i] is a prefix of
# rendering messages[:i+1], which is what assistant-only label masking relies on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2048):
    """Train a byte-level BPE on `texts` and save it as a transformers fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


@dataclass(frozen=True)
class TinyVLMSpec:
    """Shapes of the tiny SigLIP-shaped tower + Qwen2-shaped LM; defaults train on 2 CPU cores in minutes."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    intermediate: int = 256
    max_positions: int = 4096
    # Steps of tower pretraining on rendered train-split scenes (vilaray.synth.tower); 0 keeps it random.
    tower_pretrain_steps: int = 300
    # Steps of LM pretraining on the world's text corpus (vilaray.synth.lm); 0 keeps it random.
    lm_pretrain_steps: int = 300
    seed: int = 0


def build_tiny_vlm(
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    spec: TinyVLMSpec = TinyVLMSpec(),
    world_dir: str | Path | None = None,
):
    """A LLaVA-architecture VLM (SigLIP tower + mlp2x_gelu projector + Qwen2 LM): the tower pretrained on
    rendered scenes, the LM on `world_dir`'s text corpus (random without a world), the projector random;
    saved with its tokenizer and processor so `AutoModelForImageTextToText` / `AutoProcessor` load it."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    from vilaray.synth.lm import LMPretraining, pretrain_language_model
    from vilaray.synth.tower import TowerPretraining, pretrain_tower_once

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    vision = SiglipVisionConfig(
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 4,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_seq_length=(spec.image_size // spec.patch_size) ** 2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config)
    tower_stats = pretrain_tower_once(
        model.model.vision_tower, TowerPretraining(steps=spec.tower_pretrain_steps, seed=spec.seed)
    )
    lm_stats = None
    if world_dir is not None and spec.lm_pretrain_steps > 0:
        lm_stats = pretrain_language_model(
            model, tokenizer, world_dir, LMPretraining(steps=spec.lm_pretrain_steps, seed=spec.seed)
        )
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = LlavaProcessor(
        image_processor=SiglipImageProcessor(
            size={"height": spec.image_size, "width": spec.image_size},
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
        ),
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
    )
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
    (out_dir / "vilaray.json").write_text(
        json.dumps(
            {
                "projector": "mlp2x_gelu",
                "spec": spec.__dict__,
                "world": _world_identity(world_dir),
                "tower_pretraining": tower_stats,
                "lm_pretraining": lm_stats,
            },
            indent=2,
        )
    )
    return model, processor


def _world_identity(world_dir: str | Path | None) -> dict | None:
    from vilaray.synth.manifest import WorldManifest

    return None if world_dir is None else WorldManifest.load(world_dir).identity()


def assets_current(out_dir: str | Path, world_dir: str | Path | None, spec: TinyVLMSpec) -> bool:
    """`out_dir` holds assets of this spec built from this world. A rebuilt world (another version, seed
    or scale) has other texts, so its tokenizer and LM are trained again."""
    marker = Path(out_dir) / "vilaray.json"
    if not marker.is_file():
        return False
    built = json.loads(marker.read_text())
    return built.get("spec") == spec.__dict__ and built.get("world") == _world_identity(world_dir)


def build_assets(
    world_dir: str | Path, out_dir: str | Path, spec: TinyVLMSpec = TinyVLMSpec(), vocab_size: int = 2048
) -> Path:
    """Tokenizer trained on the world's text + the tiny VLM, in one directory; reused when already built."""
    from vilaray.synth.world import world_texts

    out_dir = Path(out_dir)
    if assets_current(out_dir, world_dir, spec):
        return out_dir
    tok_dir = out_dir / "tokenizer"
    train_tokenizer(world_texts(world_dir), tok_dir, vocab_size=vocab_size)
    build_tiny_vlm(tok_dir, out_dir, spec, world_dir=world_dir)
    return out_dir
