"""Where a model's turn ends: the ids its chat template closes an assistant turn with, and replies cut there.

The harness, the in-training benchmarks and Serve all stop generating at these ids and cut replies at the
first of them, so a template that ends turns with `</s>`, `<end_of_turn>` or `<|eot_id|>` scores and serves
as ChatML's `<|im_end|>` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

_MARK = "vilaray-reply-ends-here"


def template_turn_end(render: Callable[[list[dict]], str], tokenizer) -> list[int]:
    """The special token ids the chat template writes right after an assistant message's content (before
    any ordinary text): `<|im_end|>` for ChatML, `</s>` for Llama-2, `<end_of_turn>` for Gemma."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": _MARK}]},
    ]
    try:
        rendered = render(messages)
    except Exception:  # a template that cannot render this pair (e.g. needs a system turn): no template stop
        return []
    if _MARK not in rendered:
        return []
    after = tokenizer(rendered.split(_MARK, 1)[1], add_special_tokens=False)["input_ids"]
    # Special: named in the tokenizer's special-token map, or an added token marked special (ChatML's).
    added = getattr(tokenizer, "added_tokens_decoder", {})
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}
    ends = []
    for i in after:
        if i not in special:
            if ends:
                break
            # Whitespace the template puts before its end token (Llama-2's " </s>") is not content.
            if tokenizer.decode([i]).strip():
                break
            continue
        ends.append(i)
    return ends[:1]


def end_of_turn_ids(
    tokenizer, render: Callable[[list[dict]], str] | None = None, extra: Iterable = ()
) -> list[int]:
    """Every id that ends a reply: the template's turn end, the tokenizer's eos and `extra` (an export's
    generation_config eos ids); never the unknown token."""
    if render is None and getattr(tokenizer, "chat_template", None):

        def render(messages: list[dict]) -> str:
            return tokenizer.apply_chat_template(messages, tokenize=False)

    found = set(template_turn_end(render, tokenizer)) if render is not None else set()
    found |= {tokenizer.eos_token_id, *extra}
    return sorted(i for i in found if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id)


def first_line(text: str) -> str:
    """A reply's first line, trimmed (a chatty model may go on after its answer)."""
    return text.strip().split("\n", 1)[0].strip()


def cut_at_stop(ids: Sequence[int], stop_ids: Iterable[int]) -> list[int]:
    stops = set(stop_ids)
    out = []
    for i in ids:
        if int(i) in stops:
            break
        out.append(int(i))
    return out


def reply_text(tokenizer, ids: Sequence[int], stop_ids: Iterable[int]) -> str:
    """Generated ids as the reply the harness scores: up to the first stop id, special tokens dropped,
    first line."""
    return first_line(tokenizer.decode(cut_at_stop(ids, stop_ids), skip_special_tokens=True))
