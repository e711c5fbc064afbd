"""A Hugging Face tokenizer directory read for the data side only: ids with character offsets and the chat
template, with `tokenizers` and transformers' own template renderer but not transformers' model stack.

Why not `AutoTokenizer`: it imports torch, about 5 CPU-seconds in every tokenizer actor process, and the
actors never touch a tensor. The renderer is transformers' (`render_jinja_template`, the function behind
`apply_chat_template`), fed the same special tokens, so the text a row is cut from is the text the export's
processor renders at evaluation and serving time (tests/test_tokenize.py checks both against AutoTokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class TokenizerDirError(ValueError):
    pass


class TextTokenizer:
    """The parts of a fast tokenizer that tokenizing training rows needs."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        root = Path(path)
        if not (root / "tokenizer.json").is_file():
            raise TokenizerDirError(f"{root}: no tokenizer.json (the data pipeline needs a fast tokenizer)")
        self.path = root
        self._tok = Tokenizer.from_file(str(root / "tokenizer.json"))
        config_file = root / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        self.special_tokens = _special_tokens(config)
        template_file = root / "chat_template.jinja"
        self.chat_template = (
            template_file.read_text() if template_file.is_file() else config.get("chat_template")
        )

    def token_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self.token_id(self.special_tokens.get("pad_token"))

    @property
    def unk_token_id(self) -> int | None:
        return self.token_id(self.special_tokens.get("unk_token"))

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (no special tokens added) and each token's first character offset in `text`."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return np.asarray(enc.ids, dtype=np.int32), np.asarray([s for s, _ in enc.offsets], dtype=np.int64)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        if self.chat_template is None:
            raise TokenizerDirError(f"{self.path}: the tokenizer has no chat template")
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
        )
        return rendered[0]


def _special_tokens(config: dict) -> dict[str, str]:
    """`special_tokens_map` as transformers builds it from tokenizer_config.json: every `*_token` entry
    (a string, or an AddedToken's dict) and the model-specific ones (e.g. `image_token`)."""
    entries = {k: v for k, v in config.items() if k.endswith("_token")}
    entries |= config.get("model_specific_special_tokens") or {}
    out = {}
    for key, value in entries.items():
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out
