"""The pointwise judge: J(x, y) asks for a score k ∈ {0..K} (SCIR_SPEC §2; SRLM's rubric).

s(y) = Σ_k k · p_k with p the softmax restricted to the score tokens, and the judge's log-odds
that y1 ≻ y2 are (s(y1) − s(y2)) / τ: one view, so ``judge.position_debias`` does not apply. A
pair has two judge rows, J(x, y1) then J(x, y2).
"""

from __future__ import annotations

import torch

from megatron_scir.config.choices import JudgeKind
from megatron_scir.data.errors import DataError
from megatron_scir.data.judges.base import JudgeFormat
from megatron_scir.data.records import PointwiseJudgeRecord, Prompt, prompt_text
from megatron_scir.rewards.judge import expected_scores, pointwise_log_odds

__all__ = ["PointwiseJudge"]


class PointwiseJudge(JudgeFormat):
    """A score per response; score texts ``judge.score_texts`` for scores 0..K."""

    kind = JudgeKind.POINTWISE
    placeholders = ("prompt", "response")
    template_key = "pointwise_template"
    candidate_texts_key = "score_texts"
    record_type = PointwiseJudgeRecord

    def pair_fields(
        self, prompt: Prompt, response_1: str, response_2: str
    ) -> tuple[tuple[str, ...], ...]:
        """J(x, y1), then J(x, y2) (a conversation x as its turns' text)."""
        prompt = prompt_text(prompt)
        return (prompt, response_1), (prompt, response_2)

    def example(self, record: PointwiseJudgeRecord) -> tuple[tuple[str, ...], int]:
        """J(x, y) trained to its score's text.

        Raises:
            DataError: the score has no text in ``judge.score_texts``.
        """
        num_scores = len(self.candidate_texts)
        if record.score >= num_scores:
            raise DataError(
                f"{record.where}: score {record.score} has no text: judge.score_texts "
                f"holds scores 0..{num_scores - 1}"
            )
        return (prompt_text(record.prompt), record.response), record.score

    def log_odds(self, candidate_logps: torch.Tensor, num_pairs: int) -> tuple[torch.Tensor, None]:
        """(s(y1) − s(y2)) / τ from the y1 rows then the y2 rows.

        Args:
            candidate_logps: ``[2k, K+1]`` score log-probs for scores 0..K.
            num_pairs: k.

        Returns:
            ``(judge_logits_12 [k], None)``.
        """
        scores = expected_scores(candidate_logps)
        return pointwise_log_odds(
            scores[:num_pairs], scores[num_pairs:], temperature=self.judge.score_temperature
        ), None
