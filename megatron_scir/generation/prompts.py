"""Prompt token ids for generation: chat formatting plus the long-prompt policy.

A prompt becomes ``chat(prompt)`` encoded as training encodes it (``data.chat_template``, BOS
when the format asks for it). Beyond ``generation.max_prompt_length`` tokens it is either skipped
or left-truncated: the prompt text loses tokens from its start while the chat template stays
whole, so the model still sees a well-formed turn ending in the assistant header, and the ids are
exactly ``encode(chat(shortened prompt))``.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_scir.config import ConfigError
from megatron_scir.data import ChatFormat, PromptRecord

LONG_PROMPT_POLICIES = ("truncate", "skip")


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
    """Encodes prompt records within the generation prompt budget.

    Args:
        chat: The chat format (holds the tokenizer).
        max_prompt_length: ``generation.max_prompt_length``.
        long_prompts: ``truncate`` (left-truncate the prompt text) or ``skip``.

    Raises:
        ConfigError: an unknown policy, or the chat template alone exceeds the budget.
    """

    def __init__(self, chat: ChatFormat, max_prompt_length: int, long_prompts: str) -> None:
        if long_prompts not in LONG_PROMPT_POLICIES:
            raise ConfigError(
                f"generation.long_prompts={long_prompts!r}: expected one of {LONG_PROMPT_POLICIES}"
            )
        self.chat = chat
        self.max_prompt_length = max_prompt_length
        self.long_prompts = long_prompts
        template_length = len(chat.encode(chat.render("")))
        if template_length > max_prompt_length:
            raise ConfigError(
                f"the chat template with an empty prompt takes {template_length} tokens with "
                f"tokenizer {chat.tokenizer.name}, more than generation.max_prompt_length="
                f"{max_prompt_length}: raise generation.max_prompt_length"
            )

    def encode(self, record: PromptRecord) -> EncodedPrompt | None:
        """The prompt's ids, or None when it is too long and the policy is ``skip``."""
        ids = self.chat.encode(self.chat.render(record.prompt))
        if len(ids) <= self.max_prompt_length:
            return EncodedPrompt(record, tuple(ids), truncated=False)
        if self.long_prompts == "skip":
            return None
        return EncodedPrompt(record, tuple(self._left_truncate(record.prompt, ids)), truncated=True)

    def _left_truncate(self, prompt: str, ids: list[int]) -> list[int]:
        tok = self.chat.tokenizer
        field = tok.encode(prompt)
        keep = len(field) - (len(ids) - self.max_prompt_length)
        # Each round drops at least one more token of the prompt text; keep == 0 (the empty
        # prompt) fits by the check in __init__, so the loop ends.
        while True:
            keep = max(keep, 0)
            text = self.chat.render(tok.decode(field[len(field) - keep :]) if keep else "")
            ids = self.chat.encode(text)
            over = len(ids) - self.max_prompt_length
            if over <= 0:
                return ids
            keep -= over
