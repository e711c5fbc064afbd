"""An exported model loaded once: batched greedy generation and choice scoring for the eval harness, and
streamed chat generation (sampling, seeds, stop ids from the export) for the Serve endpoint."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vilaray.evals.prompts import PromptItem
from vilaray.evals.turns import end_of_turn_ids, reply_text


class EvalModel:
    """A transformers export (`AutoModelForImageTextToText` + its processor) on one device."""

    def __init__(self, model_dir: str | Path, device: str | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        import vilaray.model.hf  # noqa: F401  (a vilaray_vlm export loads through the Auto class)

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForImageTextToText.from_pretrained(str(model_dir)).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(str(model_dir))
        self.tok = self.processor.tokenizer
        self.tok.padding_side = "left"  # every prompt ends where generation starts
        # The chat template's turn end, the tokenizer's eos and whatever the export's generation_config adds.
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        self.stop_ids = end_of_turn_ids(
            self.tok,
            lambda messages: self.processor.apply_chat_template(messages, tokenize=False),
            eos if isinstance(eos, list) else [eos],
        )
        self.context_length = int(getattr(self.model.config.get_text_config(), "max_position_embeddings", 0))

    def _prompt_text(self, item: PromptItem) -> str:
        return self.processor.apply_chat_template(json.loads(item.messages), add_generation_prompt=True)

    def _inputs(self, texts: list[str], images: list[str]) -> dict:
        from PIL import Image

        pil = [Image.open(p).convert("RGB") for p in images] or None
        # The chat template spells every special token the model trained on: no extra BOS/EOS.
        inputs = self.processor(
            text=texts, images=pil, padding=True, return_tensors="pt", add_special_tokens=False
        )
        return {k: v.to(self.device) for k, v in inputs.items()}

    @torch.no_grad()
    def generate(self, items: list[PromptItem]) -> list[str]:
        """Greedy replies, one batch (all items' images in prompt order)."""
        if not items:
            return []
        inputs = self._inputs([self._prompt_text(i) for i in items], [p for i in items for p in i.images])
        out = self.model.generate(
            **inputs,
            max_new_tokens=max(i.max_new_tokens for i in items),
            do_sample=False,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tok.pad_token_id,
        )
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        return [reply_text(self.tok, ids, self.stop_ids) for ids in new]

    @torch.no_grad()
    def choice_logliks(self, item: PromptItem) -> list[float]:
        """Sum of log p(choice tokens | prompt) for each choice (text-only multiple choice)."""
        prompt = self._prompt_text(item)
        n_prompt = len(self.tok(prompt, add_special_tokens=False)["input_ids"])
        texts = [prompt + c for c in item.choices]
        self.tok.padding_side = "right"
        try:
            enc = self.tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        finally:
            self.tok.padding_side = "left"
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        keep = mask[:, 1:].clone()
        keep[:, : n_prompt - 1] = 0  # score only the continuation's tokens
        return (logp * keep).sum(dim=1).tolist()

    def chat_inputs(self, messages: list[dict], images: list[bytes]) -> dict:
        """Template messages (`{"type": "image"}` parts) and their images' bytes -> model inputs for the reply,
        rendered with the export's own chat template as training rendered them."""
        from PIL import Image

        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images] or None
        inputs = self.processor(text=[text], images=pil, return_tensors="pt", add_special_tokens=False)
        return {k: v.to(self.device) for k, v in inputs.items()}

    def collate(self, inputs: list[dict]) -> dict:
        """Several `chat_inputs` as one batch, as the processor pads a batch: token rows left-padded (every
        prompt ends where generation starts), image tensors concatenated in request order (the model fills
        image tokens in row-major order)."""
        if len(inputs) == 1:
            return inputs[0]
        width = max(x["input_ids"].shape[1] for x in inputs)
        pad = {"input_ids": self.tok.pad_token_id, "attention_mask": 0}
        out = {}
        for key in dict.fromkeys(k for x in inputs for k in x):  # a text-only first request has no pixels
            if key in pad:
                rows = [
                    torch.nn.functional.pad(x[key], (width - x[key].shape[1], 0), value=pad[key])
                    for x in inputs
                ]
                out[key] = torch.cat(rows)
            else:
                present = [x[key] for x in inputs if key in x]
                out[key] = torch.cat(present)
        return out

    @torch.no_grad()
    def stream_batch(
        self, inputs: list[dict], params: SamplingParams, emit: Callable[[list[int]], bool]
    ) -> None:
        """One `generate` (KV cache; greedy at temperature 0) over several chat prompts; after every step
        `emit` gets each row's new token id and returns False once no row wants more, which ends the call.
        Rows that reached a stop id keep receiving pad ids until the batch ends: their consumer stops reading."""
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with contextlib.suppress(GenerationCancelled):
            self.model.generate(
                **self.collate(inputs), **params.generate_kwargs(), streamer=_RowStreamer(emit),
                eos_token_id=self.stop_ids, pad_token_id=self.tok.pad_token_id,
            )  # fmt: skip

    def run(self, items: list[PromptItem]) -> list[dict]:
        """Predictions for a batch: generation for open-ended items, log-likelihoods for choice items."""
        out: dict[int, dict] = {}
        open_ended = [(i, it) for i, it in enumerate(items) if not it.choices]
        # One generate call per image count: a batch mixes 0-shot and k-shot prompts of the same task.
        by_images: dict[int, list[tuple[int, PromptItem]]] = {}
        for i, it in open_ended:
            by_images.setdefault(len(it.images), []).append((i, it))
        for group in by_images.values():
            for (i, _), text in zip(group, self.generate([it for _, it in group])):
                out[i] = {"prediction": text, "logliks": []}
        for i, it in enumerate(items):
            if it.choices:
                lls = self.choice_logliks(it)
                out[i] = {"prediction": it.choices[max(range(len(lls)), key=lls.__getitem__)], "logliks": lls}
        return [out[i] for i in range(len(items))]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def batch_key(self) -> tuple:
        """Requests whose keys are equal can share one `generate` call (max_new_tokens is capped per row by
        the caller). A seed makes a request's samples reproducible only on its own, so it never shares."""
        if self.seed is not None:
            return ("seeded", id(self))
        return ("greedy",) if self.temperature == 0 else ("sample", self.temperature, self.top_p)

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }


class _RowStreamer:
    """`generate`'s streamer: skips the prompt, hands each step's token ids (one per row) to `emit`; raising
    from `put` is how generation stops early once every row's consumer has gone."""

    def __init__(self, emit: Callable[[list[int]], bool]):
        self.emit, self.prompt_seen = emit, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        if not self.emit([int(t) for t in value.flatten().tolist()]):
            raise GenerationCancelled()

    def end(self) -> None:
        pass


class GenerationCancelled(Exception):
    """No row of a batch wants more tokens (each finished or its client went away)."""
