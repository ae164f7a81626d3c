"""The interface of a judge format: one object per ``judge.kind`` (SCIR_SPEC §2, §9).

A judge format owns everything that differs between judge kinds: its template and
placeholders, rendering, how many judge rows a pair takes, its candidate (verdict or score)
texts and their in-context token ids, the judge sequences of a pair and of a seed judge record,
and how the candidate log-probs read at the verdict positions become the judge's log-odds that
y1 ≻ y2. The data pipeline and the forward step call it; neither branches on the kind.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import shlex
from typing import Any, ClassVar

import torch

from megatron_scir.config import JudgeConfig
from megatron_scir.config.choices import JudgeKind
from megatron_scir.data.chat import ChatFormat
from megatron_scir.data.errors import SingleTokenError
from megatron_scir.data.judges.render import (
    PROBE_PROMPT,
    PROBE_RESPONSES,
    in_context_token_ids,
    render_template,
)
from megatron_scir.data.judges.rows import judge_rows_per_pair

__all__ = ["JudgeFormat"]


class JudgeFormat(abc.ABC):
    """One judge kind, configured by the ``judge`` section.

    Subclasses set the class attributes and implement the abstract members; rendering and the
    in-context candidate ids are shared.

    Args:
        judge: The judge section (template, verdict prefix, candidate texts, debiasing).
    """

    kind: ClassVar[JudgeKind]
    """The ``judge.kind`` this format implements."""
    placeholders: ClassVar[tuple[str, ...]]
    """Template placeholders: the prompt's first, then one per response shown."""
    template_key: ClassVar[str]
    """The ``judge`` config field holding the template (``pairwise_template``)."""
    candidate_texts_key: ClassVar[str]
    """The ``judge`` config field holding the candidate texts (``verdict_texts``)."""
    record_type: ClassVar[type | None]
    """The seed judge record this format trains on in the SFT stage (None: none)."""

    def __init__(self, judge: JudgeConfig) -> None:
        self.judge = judge

    @property
    def template(self) -> str:
        """The judge instruction template (``judge.<template_key>``)."""
        return getattr(self.judge, self.template_key)

    @property
    def candidate_texts(self) -> list[str]:
        """The texts the judge's logits are read at, in candidate order."""
        return list(getattr(self.judge, self.candidate_texts_key))

    @property
    def num_responses(self) -> int:
        """Responses one judge sequence shows."""
        return len(self.placeholders) - 1

    def render(self, prompt: str, *responses: str) -> str:
        """The judge instruction J(x, responses…): the template with its placeholders filled."""
        if len(responses) != self.num_responses:
            raise ValueError(
                f"a {self.kind} judge shows {self.num_responses} response(s), got {len(responses)}"
            )
        return render_template(
            self.template, **dict(zip(self.placeholders, (prompt, *responses), strict=True))
        )

    def judge_text(self, chat: ChatFormat, prompt: str, *responses: str) -> str:
        """The judge sequence's text, ending right before the verdict (SCIR_SPEC §2).

        ``chat(instruction) + judge.verdict_prefix``: the instruction is a user turn and the
        verdict/score token is the first one after the assistant header and the prefix.
        """
        return chat.render(self.render(prompt, *responses)) + self.judge.verdict_prefix

    def probe_text(self, chat: ChatFormat) -> str:
        """A rendered judge text of this kind, used to derive the candidate ids in context."""
        return self.judge_text(chat, PROBE_PROMPT, *PROBE_RESPONSES[: self.num_responses])

    def candidate_ids(self, chat: ChatFormat) -> tuple[int, ...]:
        """The candidate token ids, derived in context (SCIR_SPEC §2).

        Raises:
            SingleTokenError: a candidate text is not exactly one known, distinct token after
                the rendered judge prompt. When ``judge.verdict_prefix`` ends with spaces
                that the tokenizer merges into the text (byte-level BPE spells " A" as one
                token "ĠA", SentencePiece as "▁A") and moving that whitespace into the texts
                works, the message names those override values.
        """
        try:
            return tuple(in_context_token_ids(chat, self.probe_text(chat), self.candidate_texts))
        except SingleTokenError as err:
            fix = self._space_moved_into_texts(chat)
            if fix is None:
                raise
            raise SingleTokenError(f"{err}. {fix}") from None

    def _space_moved_into_texts(self, chat: ChatFormat) -> str | None:
        """The override values that move the prefix's trailing spaces into the candidate texts,
        when they give single distinct tokens; else None."""
        prefix = self.judge.verdict_prefix
        stripped = prefix.rstrip(" ")
        if stripped == prefix:
            return None
        space = prefix[len(stripped) :]
        texts = [t if t[:1].isspace() else space + t for t in self.candidate_texts]
        moved = dataclasses.replace(
            self.judge, verdict_prefix=stripped, **{self.candidate_texts_key: texts}
        )
        try:
            type(self)(moved).candidate_ids(chat)
        except SingleTokenError:
            return None
        overrides = (
            f"judge.verdict_prefix={stripped}",
            f"judge.{self.candidate_texts_key}={json.dumps(texts)}",
        )
        return (
            f"judge.verdict_prefix ends with {space!r}, which tokenizer {chat.tokenizer.name} "
            "merges with the text after it: put the space into the texts instead: "
            + " ".join(map(shlex.quote, overrides))
        )

    @property
    def rows_per_pair(self) -> int:
        """Judge sequences (micro-batch rows) per pair (SCIR_SPEC §9; ``judges/rows.py``)."""
        return judge_rows_per_pair(self.judge)

    @abc.abstractmethod
    def pair_fields(
        self, prompt: str, response_1: str, response_2: str
    ) -> tuple[tuple[str, ...], ...]:
        """The ``(prompt, responses…)`` of each judge row of a pair, in layout order."""

    @abc.abstractmethod
    def example(self, record: Any) -> tuple[tuple[str, ...], int]:
        """A seed judge record as ``((prompt, responses…), target candidate index)``.

        Raises:
            DataError: the record's target has no candidate text.
        """

    @abc.abstractmethod
    def log_odds(
        self, candidate_logps: torch.Tensor, num_pairs: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The judge's log-odds that y1 ≻ y2 from the judge rows' candidate log-probs.

        Args:
            candidate_logps: ``[J, K]`` float32 log-probs of the K candidates at the verdict
                position of each judge row, rows in layout order (J = rows_per_pair · n).
            num_pairs: n, the pairs of the micro-batch.

        Returns:
            ``(judge_logits_12 [n], judge_logits_21 [n] | None)`` for
            :func:`megatron_scir.rewards.judge.judge_preference`.
        """
