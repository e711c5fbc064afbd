"""Canonical sample -> token ids, loss labels and preprocessed images (one image = N placeholder tokens)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vilaray.data.images import ImageRejected, decode_image
from vilaray.data.sample import Reject
from vilaray.data.text_tokenizer import TextTokenizer
from vilaray.model.geometry import ImageGeometry

IGNORE = -100
IMAGE_MARKER = "<image>"


@dataclass(frozen=True)
class EncodeConfig:
    seq_len: int
    max_images_per_doc: int
    max_image_pixels: int
    # Text longer than this is refused before tokenizing: a runaway document must not stall an actor.
    max_doc_chars: int = 1_000_000


@dataclass
class Rendered:
    """A sample as one string with one IMAGE_MARKER per image, and the char spans that carry loss."""

    text: str
    images: list[bytes]
    loss_spans: list[tuple[int, int]]


@dataclass
class Encoded:
    input_ids: np.ndarray
    labels: np.ndarray
    images: list[bytes]
    events: dict[str, int] = field(default_factory=dict)


class SampleError(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _render_document(sample: dict, eos: str) -> Rendered:
    """Interleaved, pair and text samples: every text token carries loss, image tokens never do."""
    pieces, images, spans, pos = [], [], [], 0
    for seg in sample["segments"]:
        if seg.get("image") is not None:
            piece = IMAGE_MARKER
            images.append(seg["image"])
        elif seg.get("text"):
            piece = seg["text"] if not pieces or pieces[-1] == IMAGE_MARKER else " " + seg["text"]
            spans.append((pos, pos + len(piece)))
        else:
            continue
        pieces.append(piece)
        pos += len(piece)
    if not spans:
        raise SampleError("empty", "no text in document")
    pieces.append(eos)
    spans.append((pos, pos + len(eos)))
    return Rendered("".join(pieces), images, spans)


def template_messages(messages: list[dict]) -> tuple[list[dict], list[bytes]]:
    """Canonical chat messages -> the chat template's messages (`{"type": "image"}` parts in place of the
    bytes) and the image bytes in order: how training renders a conversation, and how Serve does."""
    out, images = [], []
    for m in messages:
        parts = []
        for p in m["content"]:
            if p.get("image") is not None:
                parts.append({"type": "image"})
                images.append(p["image"])
            elif p.get("text") is not None:
                parts.append({"type": "text", "text": p["text"]})
        out.append({"role": m["role"], "content": parts})
    return out, images


def _render_chat(sample: dict, render: Callable[..., str]) -> Rendered:
    """Chat samples: loss only on assistant turns, spans found by rendering growing prefixes of the
    conversation with the tokenizer's own chat template (never by hand-counted offsets)."""
    messages, images = template_messages(sample["messages"])
    if not any(m["role"] == "assistant" for m in messages):
        raise SampleError("no_loss_tokens", "chat without an assistant turn")
    full = render(messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(render(messages[:i], add_generation_prompt=True))
        end = len(render(messages[: i + 1], add_generation_prompt=False))
        if not full.startswith(render(messages[: i + 1], add_generation_prompt=False)):
            raise SampleError("template_not_prefix_stable", f"turn {i}")
        spans.append((start, end))
    return Rendered(full, images, spans)


class SampleEncoder:
    """Turns canonical samples into token rows; built once per actor (tokenizer loaded once)."""

    def __init__(self, tokenizer: TextTokenizer, geometry: ImageGeometry, config: EncodeConfig):
        self.tok = tokenizer
        self.geometry = geometry
        self.config = config
        self.image_token_id = tokenizer.token_id(IMAGE_MARKER)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {IMAGE_MARKER} token")
        self.eos = tokenizer.eos_token

    def _render_chat_template(self, messages: list[dict], add_generation_prompt: bool) -> str:
        if not messages:
            return ""
        return self.tok.render_chat(messages, add_generation_prompt)

    def render(self, sample: dict) -> Rendered:
        if sample["kind"] == "chat":
            return _render_chat(sample, self._render_chat_template)
        return _render_document(sample, self.eos)

    def encode(self, sample: dict) -> Encoded:
        rendered = self.render(sample)
        if len(rendered.text) > self.config.max_doc_chars:
            raise SampleError("oversized", f"{len(rendered.text)} chars > {self.config.max_doc_chars}")
        ids, starts = self.tok.encode(rendered.text)
        is_image = ids == self.image_token_id
        if int(is_image.sum()) != len(rendered.images):
            raise SampleError(
                "image_count_mismatch",
                f"{int(is_image.sum())} placeholders for {len(rendered.images)} images",
            )
        in_loss = np.zeros(len(ids), dtype=bool)
        for s, e in rendered.loss_spans:
            in_loss |= (starts >= s) & (starts < e)
        labels = np.where(in_loss & ~is_image, ids, IGNORE).astype(np.int32)
        return self._fit(ids, labels, rendered.images)

    def render_prompt(self, messages: list[dict]) -> tuple[str, list[bytes]]:
        """The chat template's text of a conversation left open for the assistant, and its images."""
        template, images = template_messages(messages)
        return self._render_chat_template(template, add_generation_prompt=True), images

    def encode_prompt(self, messages: list[dict]) -> tuple[np.ndarray, list[bytes]]:
        """A chat left open for the assistant's reply (generation prompt), tokenized and with its images
        expanded exactly as training rows are; refused when it does not fit in `seq_len` whole."""
        text, images = self.render_prompt(messages)
        ids, _ = self.tok.encode(text)
        # A k-shot prompt is not a training document: the per-document image cap does not apply.
        labels = np.full(len(ids), IGNORE, dtype=np.int32)
        enc = self._fit(ids, labels, images, need_loss=False, cap=len(images))
        if enc.events:
            raise SampleError("prompt_too_long", f"{len(ids)} tokens before images; events {enc.events}")
        return enc.input_ids, self.decode_images(enc.images)

    def _fit(
        self,
        ids: np.ndarray,
        labels: np.ndarray,
        images: list[bytes],
        need_loss: bool = True,
        cap: int | None = None,
    ) -> Encoded:
        """Cap images per document, expand each placeholder to N tokens and truncate to the budget, dropping
        every image whose tokens would not fit together with its tokens (never one without the other)."""
        n_tok = self.geometry.tokens_per_image
        budget = self.config.seq_len
        events: dict[str, int] = {}
        out_ids, out_labels, kept = [], [], []
        image_positions = np.flatnonzero(ids == self.image_token_id)
        prev, length = 0, 0
        for k, pos in enumerate(image_positions):
            take = min(pos - prev, budget - length)
            out_ids.append(ids[prev : prev + take])
            out_labels.append(labels[prev : prev + take])
            length += take
            if k >= (self.config.max_images_per_doc if cap is None else cap):
                _bump(events, "images_dropped_cap")
            elif length + n_tok > budget:
                # The budget ends here: this image and everything after it go, so no text is left that
                # refers to an image the model never sees.
                _bump(events, "images_dropped_truncation", len(image_positions) - k)
                _bump(events, "tokens_truncated", int(len(ids) - prev - take - (len(image_positions) - k)))
                prev = len(ids)
                break
            else:
                out_ids.append(np.full(n_tok, self.image_token_id, dtype=np.int32))
                out_labels.append(np.full(n_tok, IGNORE, dtype=np.int32))
                kept.append(images[k])
                length += n_tok
            prev = pos + 1
        take = min(len(ids) - prev, budget - length)
        out_ids.append(ids[prev : prev + take])
        out_labels.append(labels[prev : prev + take])
        if len(ids) - prev - take > 0:
            _bump(events, "tokens_truncated", int(len(ids) - prev - take))
        input_ids = np.concatenate(out_ids).astype(np.int32)
        out = np.concatenate(out_labels).astype(np.int32)
        # The first token has no predecessor, so it is never a target. Saying so in the labels keeps
        # loss-token counts exact and stops a packed row from training one sample to predict the next.
        out[0] = IGNORE
        if need_loss and not (out != IGNORE).any():
            raise SampleError("no_loss_tokens", "nothing left to learn from after truncation")
        return Encoded(input_ids, out, kept, events)

    def decode_images(self, images: list[bytes]) -> list[bytes]:
        size, limit = self.geometry.image_size, self.config.max_image_pixels
        return [decode_image(b, size, limit).tobytes() for b in images]

    def __call__(self, sample: dict) -> dict | Reject:
        """One canonical sample -> one TOKENIZED row (see schema.py), or a Reject naming why not."""
        try:
            enc = self.encode(sample)
            pixels = self.decode_images(enc.images)
        except (SampleError, ImageRejected) as e:
            return Reject(e.reason, sample["source"], sample["id"], e.detail, _record_excerpt(sample))
        return {
            "source": sample["source"],
            "id": sample["id"],
            "input_ids": enc.input_ids,
            "labels": enc.labels,
            "images": pixels,
            "num_tokens": len(enc.input_ids),
            "num_loss_tokens": int((enc.labels != IGNORE).sum()),
            "_events": enc.events,
        }


def _bump(counter: dict[str, int], key: str, n: int = 1) -> None:
    if n > 0:
        counter[key] = counter.get(key, 0) + n


def _record_excerpt(sample: dict) -> dict:
    """The sample with image bytes replaced by their size, small enough for a quarantine file."""

    def part(p: dict) -> dict:
        img = p.get("image")
        return {
            "text": (p.get("text") or "")[:2000] or None,
            "image": None if img is None else f"<{len(img)} bytes>",
        }

    return {
        "kind": sample["kind"],
        "segments": [part(p) for p in sample["segments"]],
        "messages": [
            {"role": m["role"], "content": [part(p) for p in m["content"]]} for m in sample["messages"]
        ],
    }
