"""Prompts become chat-formatted ids within data.max_prompt_length (truncated or skipped)."""

from __future__ import annotations

import pytest

from megatron_scir.config import ConfigError
from megatron_scir.data import ChatFormat, PromptRecord
from megatron_scir.generation import PromptEncoder

LONG = "Please explain why the sky is blue in simple words for a child. " * 6


def _encoder(tokenizer, max_length: int, policy: str = "truncate") -> PromptEncoder:
    return PromptEncoder(ChatFormat("plain", tokenizer), max_length, policy)


def test_short_prompt_is_the_chat_format_encoding(sp_tokenizer):
    chat = ChatFormat("plain", sp_tokenizer)
    encoded = _encoder(sp_tokenizer, 64).encode(PromptRecord(id="a", prompt="Hi there"))
    assert encoded.token_ids == tuple(chat.encode(chat.render("Hi there")))
    assert encoded.token_ids[0] == sp_tokenizer.bos_id
    assert not encoded.truncated


def test_long_prompt_is_left_truncated_inside_a_whole_chat_template(sp_tokenizer):
    chat = ChatFormat("plain", sp_tokenizer)
    full = chat.encode(chat.render(LONG))
    budget = len(full) // 2
    encoded = _encoder(sp_tokenizer, budget).encode(PromptRecord(id="a", prompt=LONG))
    assert encoded.truncated
    assert 0.8 * budget <= len(encoded.token_ids) <= budget
    text = sp_tokenizer.decode(encoded.token_ids)
    assert text.startswith("User: ") and text.endswith("Assistant:\n")
    kept = text.removeprefix("User: ").removesuffix("\n\nAssistant:\n")
    assert LONG.endswith(kept) and len(kept) < len(LONG)  # the prompt's tail survives
    assert list(encoded.token_ids) == chat.encode(chat.render(kept.lstrip()))


def test_long_prompt_is_skipped_under_the_skip_policy(sp_tokenizer):
    encoder = _encoder(sp_tokenizer, 24, "skip")
    assert encoder.encode(PromptRecord(id="a", prompt=LONG)) is None
    assert encoder.encode(PromptRecord(id="b", prompt="Hi")) is not None


def test_a_budget_below_the_chat_template_is_refused(sp_tokenizer):
    with pytest.raises(ConfigError, match="data.max_prompt_length"):
        _encoder(sp_tokenizer, 5)
