"""Chat formatting: the plain default, format strings and the HF tokenizer's own template."""

from __future__ import annotations

import pytest

from megatron_scir.config import ConfigError
from megatron_scir.data import PLAIN_CHAT_TEMPLATE, ChatFormat

PROMPT = "Name three colours of the sea."


def test_plain_template_renders_user_and_assistant_turns(sp_tokenizer):
    chat = ChatFormat("plain", sp_tokenizer)
    assert chat.render(PROMPT) == PLAIN_CHAT_TEMPLATE.replace("{prompt}", PROMPT)
    assert chat.render(PROMPT) == f"User: {PROMPT}\n\nAssistant:\n"


def test_plain_template_round_trips_through_the_tokenizer_with_bos_first(sp_tokenizer):
    chat = ChatFormat("plain", sp_tokenizer)
    ids = chat.encode(chat.render(PROMPT))
    assert ids[0] == sp_tokenizer.bos_id
    assert sp_tokenizer.decode(ids) == chat.render(PROMPT)


def test_plain_prompt_ids_stay_a_prefix_when_a_response_follows(sp_tokenizer):
    # Why the plain template ends with a newline: the response never merges with the header.
    chat = ChatFormat("plain", sp_tokenizer)
    text = chat.render(PROMPT)
    for response in ("The sea is blue.", " leading space", "A", "\nnewline first"):
        assert chat.encode(text + response)[: len(chat.encode(text))] == chat.encode(text)


def test_format_string_template_keeps_other_braces_literal(sp_tokenizer):
    chat = ChatFormat("[INST] {prompt} [/INST] {json}\n", sp_tokenizer)
    assert chat.render("{x}") == "[INST] {x} [/INST] {json}\n"


@pytest.mark.parametrize("template", ["no placeholder", "{prompt} and {prompt}"])
def test_format_string_needs_exactly_one_prompt_placeholder(sp_tokenizer, template):
    with pytest.raises(ConfigError, match=r"data.chat_template .* exactly once"):
        ChatFormat(template, sp_tokenizer)


def test_hf_tokenizer_chat_template_round_trips(hf_tokenizer):
    chat = ChatFormat("tokenizer", hf_tokenizer)
    text = chat.render(PROMPT)
    assert text == f"<|user|>\n{PROMPT}\n<|assistant|>\n"
    ids = chat.encode(text)
    assert ids[0] == hf_tokenizer.bos_id  # the template does not spell BOS, so it is added once
    assert ids.count(hf_tokenizer.bos_id) == 1
    assert hf_tokenizer.decode(ids) == text
    assert hf_tokenizer.pieces(ids[1:2]) == ["<|user|>"]


def test_a_chat_template_that_spells_bos_gets_no_second_bos(hf_tokenizer):
    chat = ChatFormat("<s>[INST] {prompt} [/INST]\n", hf_tokenizer)
    ids = chat.encode(chat.render(PROMPT))
    assert ids.count(hf_tokenizer.bos_id) == 1 and ids[0] == hf_tokenizer.bos_id


def test_asking_for_the_tokenizer_template_of_a_sentencepiece_model_fails_clearly(sp_tokenizer):
    with pytest.raises(ConfigError, match="has no chat template: use data.chat_template=plain"):
        ChatFormat("tokenizer", sp_tokenizer)
