"""Tokenization: image placeholders expand to N tokens, labels mask images/padding/non-assistant turns,
truncation drops images together with their tokens, bad images are refused."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vilaray.data.sample import Reject, image_part, make_sample, text_part
from vilaray.data.text_tokenizer import TextTokenizer
from vilaray.data.tokenize import IGNORE, EncodeConfig, SampleEncoder, template_messages
from vilaray.model.geometry import read_geometry

ROOT = Path(__file__).resolve().parent.parent


def png(color=(255, 0, 0), size=(80, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def encoder(tokenizer, assets_dir):
    return SampleEncoder(
        TextTokenizer(assets_dir), read_geometry(assets_dir), EncodeConfig(512, 3, 4096 * 4096)
    )


def loss_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t in row["labels"] if t != IGNORE])


def test_pair_labels_cover_caption_only(encoder, tokenizer):
    row = encoder(make_sample("s", "1", "pair", [image_part(png()), text_part("a red circle on the left")]))
    n = encoder.geometry.tokens_per_image
    ids, labels = row["input_ids"], row["labels"]
    image_pos = np.flatnonzero(ids == encoder.image_token_id)
    assert len(image_pos) == n and (labels[image_pos] == IGNORE).all()
    assert loss_text(tokenizer, row) == "a red circle on the left" + tokenizer.eos_token
    assert len(row["images"]) == 1 and len(row["images"][0]) == encoder.geometry.image_bytes
    assert row["num_loss_tokens"] == int((labels != IGNORE).sum())


def test_interleaved_keeps_order_and_caps_images(encoder, tokenizer):
    segs = []
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (200, 200, 0)]
    for i, c in enumerate(colors):
        segs += [text_part(f"picture {i}"), image_part(png(c))]
    row = encoder(make_sample("s", "2", "interleaved", segs))
    assert row["_events"] == {"images_dropped_cap": 2}
    # The kept images are the first three, in document order.
    firsts = [np.frombuffer(b, np.uint8).reshape(64, 64, 3)[0, 0].tolist() for b in row["images"]]
    assert firsts == [list(c) for c in colors[:3]]
    ids = row["input_ids"]
    starts = np.flatnonzero(np.diff((ids == encoder.image_token_id).astype(int)) == 1)
    assert len(starts) == 3
    text = loss_text(tokenizer, row)
    assert text.index("picture 1") < text.index("picture 2") < text.index("picture 4")


def test_truncation_never_splits_an_image(tokenizer, assets_dir):
    geometry = read_geometry(assets_dir)
    enc = SampleEncoder(
        TextTokenizer(assets_dir), geometry, EncodeConfig(geometry.tokens_per_image + 40, 4, 10**8)
    )
    segs = [text_part("intro words " * 3), image_part(png()), text_part("middle " * 5), image_part(png())]
    segs.append(text_part("tail " * 50))
    row = enc(make_sample("s", "3", "interleaved", segs))
    n_img_tokens = int((row["input_ids"] == enc.image_token_id).sum())
    assert n_img_tokens == len(row["images"]) * geometry.tokens_per_image == geometry.tokens_per_image
    assert row["num_tokens"] <= geometry.tokens_per_image + 40
    assert row["_events"]["images_dropped_truncation"] == 1


def test_chat_labels_only_assistant_turns(encoder, tokenizer):
    msgs = [
        {"role": "system", "content": [text_part("You are helpful.")]},
        {"role": "user", "content": [image_part(png()), text_part("What colour is the circle?")]},
        {"role": "assistant", "content": [text_part("red")]},
        {"role": "user", "content": [text_part("How many shapes?")]},
        {"role": "assistant", "content": [text_part("one")]},
    ]
    row = encoder(make_sample("s", "4", "chat", messages=msgs))
    text = loss_text(tokenizer, row)
    assert text.replace("<|im_end|>", "|").split("|")[:2] == ["red", "\none"]
    assert "colour" not in text and "helpful" not in text and "user" not in text
    # The same boundary derived from the template: every labelled token lies inside an assistant turn.
    rendered = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": "".join(p["text"] or "<image>" for p in m["content"])} for m in msgs],
        tokenize=False,
    )
    assert rendered.count("<|im_start|>assistant") == 2


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (b"not an image at all", "corrupt_image"),
        (png()[:40], "corrupt_image"),
        (b"", "corrupt_image"),
    ],
)
def test_bad_images_rejected(encoder, image, reason):
    out = encoder(make_sample("s", "5", "pair", [image_part(image), text_part("caption")]))
    assert isinstance(out, Reject) and out.reason == reason


def test_decompression_bomb_refused_without_decoding(tokenizer, assets_dir):
    enc = SampleEncoder(
        TextTokenizer(assets_dir), read_geometry(assets_dir), EncodeConfig(512, 3, max_image_pixels=100 * 100)
    )
    out = enc(make_sample("s", "6", "pair", [image_part(png(size=(4000, 4000))), text_part("big")]))
    assert isinstance(out, Reject) and out.reason == "image_too_large"


def test_placeholder_mismatch_and_empty(encoder):
    literal = make_sample("s", "7", "pair", [image_part(png()), text_part("see <image> here")])
    assert encoder(literal).reason == "image_count_mismatch"
    assert encoder(make_sample("s", "8", "interleaved", [image_part(png())])).reason == "empty"
    no_answer = make_sample("s", "9", "chat", messages=[{"role": "user", "content": [text_part("hi")]}])
    assert encoder(no_answer).reason == "no_loss_tokens"


def shipped_recipe_samples(world_dir, per_source: int) -> list[dict]:
    """The first samples of every source the shipped tiny recipe reads, through the pipeline's readers."""
    from vilaray.config import load_recipe
    from vilaray.data.pipeline import iter_shard_samples, plan_source
    from vilaray.data.quarantine import LedgerClient, Quarantine

    recipe = load_recipe(ROOT / "jobs" / "recipes" / "tiny.yaml", [f"defaults.data.root={world_dir}"])
    out = []
    for stage in recipe.stages:
        data = recipe.data_for(stage)
        for name, src in data.sources.items():
            shards = plan_source(name, src, data)
            samples = (
                x for shard in shards for x in iter_shard_samples(shard, LedgerClient(Quarantine(None)))
            )
            out += list(itertools.islice(samples, per_source))
    return out


def test_text_tokenizer_matches_transformers_on_every_shipped_source(encoder, tokenizer, world_dir):
    """The actors' torch-free tokenizer gives AutoTokenizer's ids, offsets and chat renderings: training rows
    are cut from the text the export's processor renders when evaluating and serving."""
    text_tok = encoder.tok
    samples = shipped_recipe_samples(world_dir, per_source=6)
    assert {s["kind"] for s in samples} == {"pair", "interleaved", "text", "chat"}
    for sample in samples:
        text = encoder.render(sample).text
        ids, starts = text_tok.encode(text)
        ref = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert ids.tolist() == ref["input_ids"]
        assert starts.tolist() == [s for s, _ in ref["offset_mapping"]]
        if sample["kind"] == "chat":
            messages, _ = template_messages(sample["messages"])
            for prompt in (False, True):
                ours = text_tok.render_chat(messages, add_generation_prompt=prompt)
                assert ours == tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=prompt
                )
    assert text_tok.pad_token_id == tokenizer.pad_token_id and text_tok.eos_token == tokenizer.eos_token


def test_encoding_a_chat_imports_no_torch(assets_dir):
    # A tokenizer actor never touches a tensor; importing torch would cost it ~5 CPU-seconds at start.
    code = (
        "import sys; from vilaray.data.pipeline import PipelineSpec; from vilaray.data.text_tokenizer import "
        "TextTokenizer; from vilaray.data.tokenize import template_messages; "
        f"t = TextTokenizer({str(assets_dir)!r}); "
        "m, _ = template_messages([{'role': 'user', 'content': [{'text': 'hi', 'image': None}]}]); "
        "t.encode(t.render_chat(m, True)); sys.exit('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
