"""Prompt token ids for generation: the one prompt budget plus the long-prompt policy.

A prompt becomes ``chat(prompt)`` fitted to ``data.max_prompt_length`` by
:func:`megatron_scir.data.prompts.fit_prompt`, the function pair encoding and training use, so
the prompt ids a response is sampled for are the prompt ids it is trained on. Beyond the budget
a prompt is left-truncated (``generation.long_prompts=truncate``) or skipped (``skip``).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_scir.config import Config
from megatron_scir.config.choices import LongPrompts
from megatron_scir.data import ChatFormat, PromptRecord, Tokenizer
from megatron_scir.data.prompts import check_prompt_budget, fit_prompt


@dataclass(frozen=True, slots=True)
class EncodedPrompt:
    """A prompt ready for generation.

    Attributes:
        record: The prompt record (id, original text, ``path:line``).
        token_ids: ``encode(chat(prompt))``, at most ``max_prompt_length`` ids.
        truncated: Whether the prompt text was left-truncated to fit.
    """

    record: PromptRecord
    token_ids: tuple[int, ...]
    truncated: bool


class PromptEncoder:
    """Encodes prompt records within the prompt budget.

    Args:
        chat: The chat format (holds the tokenizer).
        max_prompt_length: ``data.max_prompt_length``.
        long_prompts: ``generation.long_prompts``: ``truncate`` or ``skip``.

    Raises:
        ConfigError: the chat template alone exceeds the budget.
    """

    def __init__(self, chat: ChatFormat, max_prompt_length: int, long_prompts: str) -> None:
        check_prompt_budget(chat, max_prompt_length)
        self.chat = chat
        self.max_prompt_length = max_prompt_length
        self.long_prompts = LongPrompts(long_prompts)

    @classmethod
    def from_config(cls, cfg: Config, tokenizer: Tokenizer) -> PromptEncoder:
        """The run's encoder: ``data.chat_template``, ``data.max_prompt_length`` (the one prompt
        budget) and ``generation.long_prompts``."""
        chat = ChatFormat(cfg.data.chat_template, tokenizer)
        return cls(chat, cfg.data.max_prompt_length, cfg.generation.long_prompts)

    def encode(self, record: PromptRecord) -> EncodedPrompt | None:
        """The prompt's ids, or None when it is too long and the policy is ``skip``."""
        fitted = fit_prompt(self.chat, record.prompt, self.max_prompt_length)
        if fitted.truncated and self.long_prompts == LongPrompts.SKIP:
            return None
        return EncodedPrompt(record, fitted.ids, truncated=fitted.truncated)
