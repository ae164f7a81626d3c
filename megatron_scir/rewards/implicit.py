"""The implicit reward model: DPO's reward read from policy and reference log-probs (SCIR_SPEC §1).

    r(y) = β · (log πθ(y|x) − log πref(y|x))        (÷ |y| with length normalisation)
    Δ_I  = r(y1) − r(y2),   P_I = σ(Δ_I)

Pure functions over per-sequence tensors; the caller decides where they run (the last pipeline
stage, identical on every TP rank).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sequence_logps", "implicit_rewards", "implicit_log_odds", "implicit_preference"]


def sequence_logps(token_logps: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of token log-probs over the response tokens of each sequence (SCIR_SPEC Notation).

    Args:
        token_logps: ``[b, s]`` float32 log-probs of the labels (``-inf`` allowed where masked).
        loss_mask: ``[b, s]`` 1.0 on response tokens, 0.0 on prompt, padding and judge rows.

    Returns:
        ``[b]`` float32 ``log π(y|x)``. Masked positions contribute exactly nothing (``where``,
        not a product, so a masked ``-inf`` cannot turn into NaN).
    """
    token_logps = token_logps.float()
    return torch.where(loss_mask > 0, token_logps, torch.zeros_like(token_logps)).sum(dim=-1)


def implicit_rewards(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    *,
    beta: float,
    response_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """The implicit reward r(y) = β · (log πθ(y|x) − log πref(y|x)) (SCIR_SPEC §1).

    Args:
        policy_logps: ``[n]`` response log-probs under the policy.
        ref_logps: ``[n]`` response log-probs under the frozen reference (stored with the pairs).
        beta: the DPO temperature β.
        response_lengths: ``[n]`` response token counts; when given the log-ratio is divided by
            them (``scir.length_normalize=true``).

    Returns:
        ``[n]`` float32 rewards.
    """
    log_ratio = policy_logps.float() - ref_logps.float()
    if response_lengths is not None:
        log_ratio = log_ratio / response_lengths.float()
    return beta * log_ratio


def implicit_log_odds(
    policy_logps_1: torch.Tensor,
    policy_logps_2: torch.Tensor,
    ref_logps_1: torch.Tensor,
    ref_logps_2: torch.Tensor,
    *,
    beta: float,
    response_lengths: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Δ_I = r(y1) − r(y2), the implicit reward model's log-odds that y1 ≻ y2 (SCIR_SPEC §1).

    Args:
        policy_logps_1, policy_logps_2: ``[n]`` policy log-probs of y1 and y2.
        ref_logps_1, ref_logps_2: ``[n]`` reference log-probs of y1 and y2.
        beta: the DPO temperature β.
        response_lengths: ``([n], [n])`` lengths of y1 and y2 for length normalisation, or
            ``None`` for plain sums.

    Returns:
        ``[n]`` float32 Δ_I.
    """
    lengths_1, lengths_2 = response_lengths if response_lengths is not None else (None, None)
    reward_1 = implicit_rewards(policy_logps_1, ref_logps_1, beta=beta, response_lengths=lengths_1)
    reward_2 = implicit_rewards(policy_logps_2, ref_logps_2, beta=beta, response_lengths=lengths_2)
    return reward_1 - reward_2


def implicit_preference(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P_I = σ(Δ_I) as the log-probabilities of the Bernoulli "y1 ≻ y2" (SCIR_SPEC §1).

    Args:
        delta: ``[n]`` Δ_I.

    Returns:
        ``(log P_I, log(1 − P_I))``, each ``[n]`` float32, computed with ``logsigmoid`` (finite
        for every finite Δ; no clamping).
    """
    delta = delta.float()
    return F.logsigmoid(delta), F.logsigmoid(-delta)
