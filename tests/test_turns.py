"""Where a reply ends: the chat template's own turn-end token, not ChatML's `<|im_end|>` spelled out."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer
from vilaray.evals.turns import end_of_turn_ids, first_line, reply_text

# Other families' templates (shapes only): Gemma ends a turn with <end_of_turn>, Llama-3 with <|eot_id|>
# after a space here (whitespace before the end token is not content), and a plain template with none.
TEMPLATES = {
    "gemma": (
        "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
        "{% for p in m['content'] %}{{ p['text'] }}{% endfor %}<end_of_turn>\n{% endfor %}",
        "<end_of_turn>",
    ),
    "llama3": (
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{% for p in m['content'] %}{{ p['text'] }}{% endfor %} <|eot_id|>{% endfor %}",
        "<|eot_id|>",
    ),
    "plain": (
        "{% for m in messages %}{{ m['role'] }}: {% for p in m['content'] %}{{ p['text'] }}{% endfor %}\n{% endfor %}",
        None,
    ),
}


@pytest.fixture(scope="module")
def tokenizer(assets_dir):
    return AutoTokenizer.from_pretrained(str(assets_dir))


def test_shipped_chatml_template_ends_turns_at_im_end_and_eos(tokenizer):
    assert end_of_turn_ids(tokenizer) == sorted(
        {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    )


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_turn_end_comes_from_the_template_and_cuts_the_reply(assets_dir, family):
    template, end = TEMPLATES[family]
    tok = AutoTokenizer.from_pretrained(str(assets_dir))
    added = ["<start_of_turn>", "<end_of_turn>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_tokens(added, special_tokens=True)
    tok.chat_template = template
    stops = end_of_turn_ids(tok)
    expected = {tok.eos_token_id} | ({tok.convert_tokens_to_ids(end)} if end else set())
    assert set(stops) == expected
    answer = tok("blue circle", add_special_tokens=False)["input_ids"]
    tail = tok(" then more\nand more", add_special_tokens=False)["input_ids"]
    if end:
        # What the model generates: its answer, the template's turn end, then whatever it would go on with.
        assert reply_text(tok, answer + [tok.convert_tokens_to_ids(end)] + tail, stops) == "blue circle"
    # Without a turn end the reply runs to the first line's end; ChatML's literal never matters here.
    assert reply_text(tok, answer + tail, stops) == "blue circle then more"


def test_first_line_trims_and_stops_at_the_first_newline():
    assert first_line("  red square \nsecond line") == "red square"
    assert first_line("\n") == ""
