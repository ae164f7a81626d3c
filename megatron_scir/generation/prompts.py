"""Prompt token ids for generation: the one prompt budget plus the long-prompt policy.

A prompt becomes ``chat(prompt)`` fitted to ``data.max_prompt_length`` by
:func:`megatron_scir.data.prompts.fit_prompt`, the function pair encoding and training use, so
the prompt ids a response is sampled for are the prompt ids it is trained on. Beyond the budget
a prompt is left-truncated (``generation.long_prompts=truncate``) or skipped (``skip``).

:meth:`PromptEncoder.encode_all` measures every prompt of a run before the first token is
sampled: more left-truncated prompts than ``data.max_truncated_fraction`` allows, or a ``skip``
that leaves no prompt, is refused naming the count, the longest prompt and the key to raise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_scir.config import Config
from megatron_scir.config.choices import LongPrompts
from megatron_scir.data import ChatFormat, DataError, PromptRecord, Tokenizer
from megatron_scir.data.prompts import FittedPrompt, check_prompt_budget, fit_prompt
from megatron_scir.data.truncation import PROMPT_KEY, TruncationStats, check_truncation

logger = logging.getLogger(__name__)


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
        max_truncated_fraction: ``data.max_truncated_fraction``: the share of a run's prompts
            :meth:`encode_all` lets ``truncate`` cut.

    Raises:
        ConfigError: the chat template alone exceeds the budget.
    """

    def __init__(
        self,
        chat: ChatFormat,
        max_prompt_length: int,
        long_prompts: str,
        *,
        max_truncated_fraction: float = 0.0,
    ) -> None:
        check_prompt_budget(chat, max_prompt_length)
        self.chat = chat
        self.max_prompt_length = max_prompt_length
        self.long_prompts = LongPrompts(long_prompts)
        self.max_truncated_fraction = max_truncated_fraction

    @classmethod
    def from_config(cls, cfg: Config, tokenizer: Tokenizer) -> PromptEncoder:
        """The run's encoder: ``data.chat_template``, ``data.max_prompt_length`` (the one prompt
        budget), ``generation.long_prompts`` and ``data.max_truncated_fraction``."""
        chat = ChatFormat(cfg.data.chat_template, tokenizer)
        return cls(
            chat,
            cfg.data.max_prompt_length,
            cfg.generation.long_prompts,
            max_truncated_fraction=cfg.data.max_truncated_fraction,
        )

    def encode(self, record: PromptRecord) -> EncodedPrompt | None:
        """The prompt's ids, or None when it is too long and the policy is ``skip``."""
        return self._policy(record, fit_prompt(self.chat, record.prompt, self.max_prompt_length))

    def encode_all(self, records: Sequence[PromptRecord]) -> dict[str, EncodedPrompt | None]:
        """Every prompt's ids by prompt id (None: skipped), measured before anything is sampled.

        Raises:
            DataError: ``truncate`` would cut more than ``max_truncated_fraction`` of the
                prompts, or ``skip`` would skip every prompt; the message names the count, the
                longest prompt (``file:line``, id, tokens) and the budget that would hold it.
        """
        stats = TruncationStats()
        encoded = {}
        for record in records:
            fitted = fit_prompt(self.chat, record.prompt, self.max_prompt_length)
            stats.num_items += 1
            if fitted.truncated:
                stats.num_items_truncated += 1
                stats.num_prompts_truncated += 1
                where = f"{record.where} (id {record.id!r})" if record.where else repr(record.id)
                stats.over_budget(PROMPT_KEY, fitted.length, where)
            encoded[record.id] = self._policy(record, fitted)
        if self.long_prompts == LongPrompts.SKIP:
            self._report_skipped(stats)
        else:
            check_truncation(
                stats,
                what="prompts",
                budgets={PROMPT_KEY: self.max_prompt_length},
                max_fraction=self.max_truncated_fraction,
                alternative=", set generation.long_prompts=skip to skip them",
            )
        return encoded

    def _policy(self, record: PromptRecord, fitted: FittedPrompt) -> EncodedPrompt | None:
        if fitted.truncated and self.long_prompts == LongPrompts.SKIP:
            return None
        return EncodedPrompt(record, fitted.ids, truncated=fitted.truncated)

    def _report_skipped(self, stats: TruncationStats) -> None:
        """``skip`` was asked for: say up front what it skips; refuse when it skips everything."""
        n, over = stats.num_items, stats.num_items_truncated
        if over == 0:
            return
        longest = stats.longest[PROMPT_KEY]
        counts = (
            f"{over} of {n} prompts are over {PROMPT_KEY}={self.max_prompt_length} (the longest: "
            f"{longest.item}, {longest.length} tokens)"
        )
        if over == n:
            raise DataError(
                f"{counts}: generation.long_prompts=skip would skip every prompt. Raise "
                f"{PROMPT_KEY} to at least {longest.length} (within model.max_position_embeddings)"
            )
        logger.warning("%s: skipped, as generation.long_prompts=skip asks", counts)
