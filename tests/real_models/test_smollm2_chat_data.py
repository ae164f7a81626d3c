"""Multi-turn conversations with SmolLM2's own chat template: the prompt ids megatron-scir
renders and encodes are exactly ``tokenizer.apply_chat_template(messages,
add_generation_prompt=True)``, with and without a system turn (docs/data.md)."""

from __future__ import annotations

import pytest

from megatron_scir.data import HFTokenizer
from megatron_scir.data.chat import ChatFormat
from megatron_scir.data.prompts import fit_prompt
from megatron_scir.data.records import as_prompt, messages_json, parse_messages

pytestmark = pytest.mark.real_model

CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 5?"},
    ],
    [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one, please."},
    ],
    [{"role": "user", "content": "Hello!"}],  # stored as a plain prompt string
]


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_rendered_prompt_ids_equal_apply_chat_template(smollm2_dir, index):
    from transformers import AutoTokenizer

    messages = CONVERSATIONS[index]
    prompt = as_prompt(parse_messages(messages, "messages"))
    assert messages_json(prompt) == messages
    chat = ChatFormat("tokenizer", HFTokenizer(smollm2_dir))
    fitted = fit_prompt(chat, prompt, 512)
    expected = AutoTokenizer.from_pretrained(smollm2_dir).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert list(fitted.ids) == list(expected) and not fitted.truncated
