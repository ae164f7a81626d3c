"""The two reward models SCIR makes consistent (SCIR_SPEC §1–§2), as pure tensor functions.

- implicit: the policy's DPO reward r(y) = β·(log πθ − log πref) and P_I = σ(Δ_I).
- judge: the same model as a judge, read from the verdict/score token log-probs at the verdict
  position; P_G with position debiasing.
- templates (data engineering): judge prompt rendering and the in-context verdict token ids.

Importing this package does not import Megatron-Core.
"""

from megatron_scir.rewards.implicit import (
    implicit_log_odds,
    implicit_preference,
    implicit_rewards,
    sequence_logps,
)
from megatron_scir.rewards.judge import (
    expected_scores,
    judge_preference,
    pairwise_log_odds,
    pointwise_log_odds,
    verdict_mass,
)

__all__ = [
    "expected_scores",
    "implicit_log_odds",
    "implicit_preference",
    "implicit_rewards",
    "judge_preference",
    "pairwise_log_odds",
    "pointwise_log_odds",
    "sequence_logps",
    "verdict_mass",
]
