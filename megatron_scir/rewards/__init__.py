"""The two reward models SCIR makes consistent (SCIR_SPEC §1–§2), as pure tensor functions.

- implicit: the policy's DPO reward r(y) = β·(log πθ − log πref) and P_I = σ(Δ_I).
- judge: the same model as a judge, read from the verdict/score token log-probs at the verdict
  position; P_G with position debiasing.
- srlm: the SRLM baseline's fixed labels from the M_t judge (a no-grad judge step).

Judge templates, rendering and the in-context verdict/score ids are data engineering and live in
:mod:`megatron_scir.data.judges`. Importing this package imports neither Megatron-Core nor
``megatron_scir.data``.
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
from megatron_scir.rewards.srlm import srlm_labels

__all__ = [
    "expected_scores",
    "implicit_log_odds",
    "implicit_preference",
    "implicit_rewards",
    "judge_preference",
    "pairwise_log_odds",
    "pointwise_log_odds",
    "sequence_logps",
    "srlm_labels",
    "verdict_mass",
]
