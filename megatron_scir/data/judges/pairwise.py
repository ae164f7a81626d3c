"""The pairwise judge: J(x, first, second) asks which response is better (SCIR_SPEC §2).

The verdict is read at the position right before it: ℓ(first, second) = log p(A) − log p(B).
With position debiasing (``judge.position_debias`` mean_prob / mean_logit) a pair has two judge
rows, J(x, y1, y2) then J(x, y2, y1); with ``none`` only the first.
"""

from __future__ import annotations

import torch

from megatron_scir.config.choices import JudgeKind
from megatron_scir.data.judges.base import JudgeFormat
from megatron_scir.data.records import PairwiseJudgeRecord, Prompt, prompt_text
from megatron_scir.rewards.judge import pairwise_log_odds

__all__ = ["PairwiseJudge"]

# A seed judge record's verdict, as the index of its text in judge.verdict_texts.
_VERDICTS = ("A", "B")


class PairwiseJudge(JudgeFormat):
    """A/B verdict on two responses shown in order; verdict texts ``judge.verdict_texts``."""

    kind = JudgeKind.PAIRWISE
    placeholders = ("prompt", "response_a", "response_b")
    template_key = "pairwise_template"
    candidate_texts_key = "verdict_texts"
    record_type = PairwiseJudgeRecord

    def pair_fields(
        self, prompt: Prompt, response_1: str, response_2: str
    ) -> tuple[tuple[str, ...], ...]:
        """J(x, y1, y2), then (with debiasing) J(x, y2, y1); a conversation x is shown as its
        turns' text (:func:`~megatron_scir.data.records.prompt_text`)."""
        prompt = prompt_text(prompt)
        orders = ((prompt, response_1, response_2), (prompt, response_2, response_1))
        return orders[: self.rows_per_pair]

    def example(self, record: PairwiseJudgeRecord) -> tuple[tuple[str, ...], int]:
        """J(x, a, b) trained to its verdict ("A": the first verdict text, "B": the second)."""
        fields = (prompt_text(record.prompt), record.response_a, record.response_b)
        return fields, _VERDICTS.index(record.verdict)

    def log_odds(
        self, candidate_logps: torch.Tensor, num_pairs: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ℓ12 from the first k rows and, with two orders, ℓ21 from the next k.

        Args:
            candidate_logps: ``[J, 2]`` verdict log-probs (first-shown wins, second wins).
            num_pairs: k.

        Returns:
            ``(ℓ12 [k], ℓ21 [k])``, or ``(ℓ12 [k], None)`` with one order.
        """
        log_odds = pairwise_log_odds(candidate_logps)
        if self.rows_per_pair == 1:
            return log_odds, None
        return log_odds[:num_pairs], log_odds[num_pairs:]
