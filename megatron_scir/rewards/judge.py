"""The generative reward model: the judge read from logits at the verdict position (SCIR_SPEC §2).

Inputs are full-vocabulary log-probabilities of the verdict (or score) tokens at the verdict
position, ``[n, K]``, as returned by
:func:`megatron_scir.parallel.vocab_parallel.vocab_parallel_candidate_log_probs`. Outputs are the
judge's log-odds that y1 ≻ y2 and, combined over the two presentation orders, P_G as the
log-probabilities of a Bernoulli. All in float32 and log space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from megatron_scir.config.choices import PositionDebias

__all__ = [
    "pairwise_log_odds",
    "verdict_mass",
    "expected_scores",
    "pointwise_log_odds",
    "judge_preference",
]

_LOG_2 = math.log(2.0)


def pairwise_log_odds(verdict_logps: torch.Tensor) -> torch.Tensor:
    """ℓ(first, second) = z_A − z_B = log p(A) − log p(B): log-odds that the first-shown wins.

    Args:
        verdict_logps: ``[n, 2]`` log-probs of the verdict tokens (first-shown wins, second
            wins), in ``judge.verdict_texts`` order.

    Returns:
        ``[n]`` float32 log-odds. The full-softmax normaliser cancels in the difference (also in
        its gradient), so this equals the difference of the raw verdict logits.
    """
    verdict_logps = verdict_logps.float()
    return verdict_logps[:, 0] - verdict_logps[:, 1]


def verdict_mass(verdict_logps: torch.Tensor) -> torch.Tensor:
    """Probability the judge puts on any valid verdict/score token (``judge/verdict_mass``).

    Args:
        verdict_logps: ``[n, K]`` full-vocabulary log-probs of the K verdict/score tokens.

    Returns:
        ``[n]`` float32 ``Σ_k p_k`` under the full vocabulary softmax.
    """
    return torch.logsumexp(verdict_logps.float(), dim=-1).exp()


def expected_scores(score_logps: torch.Tensor) -> torch.Tensor:
    """s(y) = Σ_k k · p_k with p the softmax restricted to the score tokens (SCIR_SPEC §2).

    Args:
        score_logps: ``[n, K+1]`` log-probs of the score tokens for scores ``0..K`` (any common
            normaliser: the restriction renormalises).

    Returns:
        ``[n]`` float32 expected scores in ``[0, K]``.
    """
    restricted = torch.softmax(score_logps.float(), dim=-1)
    scores = torch.arange(restricted.size(-1), dtype=torch.float32, device=restricted.device)
    return restricted @ scores


def pointwise_log_odds(
    score_1: torch.Tensor, score_2: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Pointwise judge log-odds that y1 ≻ y2: (s(y1) − s(y2)) / τ (SCIR_SPEC §2).

    Args:
        score_1, score_2: ``[n]`` expected scores of y1 and y2.
        temperature: τ (``judge.score_temperature``).

    Returns:
        ``[n]`` float32 log-odds, to be passed as ``judge_logits_12`` (no second view).
    """
    return (score_1.float() - score_2.float()) / temperature


def _mean_prob(logits_12: torch.Tensor, logits_21: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # log ½(σ(a) + σ(b)) = logaddexp(logsigmoid(a), logsigmoid(b)) − log 2, no clamping.
    log_p = torch.logaddexp(F.logsigmoid(logits_12), F.logsigmoid(-logits_21)) - _LOG_2
    log_q = torch.logaddexp(F.logsigmoid(-logits_12), F.logsigmoid(logits_21)) - _LOG_2
    return log_p, log_q


def _mean_logit(logits_12: torch.Tensor, logits_21: torch.Tensor) -> tuple[torch.Tensor, ...]:
    combined = 0.5 * (logits_12 - logits_21)
    return F.logsigmoid(combined), F.logsigmoid(-combined)


def _one_order(logits_12: torch.Tensor, logits_21: torch.Tensor) -> tuple[torch.Tensor, ...]:
    raise ValueError(
        "position_debias='none' reads one judge order; pass judge_logits_21=None (and build "
        "one judge sequence per pair) or choose mean_prob / mean_logit"
    )


# How two presentation orders combine (SCIR_SPEC §2). The option is validated where it is read
# (``judge.position_debias`` in the config, ``LossOptions``), not again here.
_COMBINE_ORDERS = {
    PositionDebias.MEAN_PROB: _mean_prob,
    PositionDebias.MEAN_LOGIT: _mean_logit,
    PositionDebias.NONE: _one_order,
}


def judge_preference(
    judge_logits_12: torch.Tensor,
    judge_logits_21: torch.Tensor | None = None,
    *,
    position_debias: PositionDebias = PositionDebias.MEAN_PROB,
) -> tuple[torch.Tensor, torch.Tensor]:
    """P_G, the judge's probability that y1 ≻ y2, as Bernoulli log-probabilities (SCIR_SPEC §2).

    ``mean_prob``: P_G = ½(σ(ℓ12) + σ(−ℓ21)); ``mean_logit``: P_G = σ(½(ℓ12 − ℓ21));
    ``none``: P_G = σ(ℓ12). With one view (``judge_logits_21=None``, e.g. pointwise judging)
    P_G = σ(ℓ12) whatever ``position_debias`` says: there is no second order to combine.

    Args:
        judge_logits_12: ``[n]`` log-odds that y1 ≻ y2 with y1 shown first.
        judge_logits_21: ``[n]`` log-odds that y2 ≻ y1 with y2 shown first, or ``None``.
        position_debias: a :class:`~megatron_scir.config.choices.PositionDebias` (or its string).

    Returns:
        ``(log P_G, log(1 − P_G))``, each ``[n]`` float32, in log space without clamping:
        ``log ½(σ(a) + σ(b)) = logaddexp(logsigmoid(a), logsigmoid(b)) − log 2``.

    Raises:
        ValueError: ``none`` together with a second view (the caller built two judge sequences
            that would be silently ignored).
    """
    logits_12 = judge_logits_12.float()
    if judge_logits_21 is None:
        return F.logsigmoid(logits_12), F.logsigmoid(-logits_12)
    return _COMBINE_ORDERS[position_debias](logits_12, judge_logits_21.float())
