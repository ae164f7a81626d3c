"""Dynamic consistent-pair selection (SCIR_SPEC §4): which pairs the two reward models agree on.

Recomputed every step with the current θ, under no_grad, from P_I and P_G. Both the SCIR loss
(which trains on the selected pairs) and its metrics (:mod:`megatron_scir.losses.scir_metrics`)
read the :class:`Selection`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_scir.losses.bernoulli import Bernoulli

__all__ = ["Selection", "select_consistent", "select_judged"]


@dataclass(frozen=True)
class Selection:
    """Which pairs the two reward models agree on (SCIR_SPEC §4), computed without gradient.

    Attributes:
        consistent: ``[n]`` bool, both models give the same label with confidence.
        first_chosen: ``[n]`` bool, the agreed label (meaningful where ``consistent``): y1 ≻ y2.
        ties: ``[n]`` bool, at least one model is within ``tie_eps`` of ½ (has no label).
        valid: ``[n]`` bool, real pairs (False for fillers that only pad a micro-batch to k).
    """

    consistent: torch.Tensor
    first_chosen: torch.Tensor
    ties: torch.Tensor
    valid: torch.Tensor


@torch.no_grad()
def select_consistent(
    implicit: Bernoulli,
    judge: Bernoulli,
    *,
    margin: float,
    tie_eps: float,
    pair_mask: torch.Tensor | None = None,
) -> Selection:
    """consistent = (P_I − ½)(P_G − ½) > 0 and both |P − ½| > max(m, tie_eps) (SCIR_SPEC §4).

    Args:
        implicit: P_I per pair (``[n]`` log-probabilities).
        judge: P_G per pair.
        margin: m, the minimum confidence |P − ½| of both models.
        tie_eps: predictions within this of ½ carry no label.
        pair_mask: ``[n]`` bool; pairs outside it (fillers) are never consistent or ties.
            ``None``: all pairs are real.

    Returns:
        The :class:`Selection` of the n pairs.
    """
    centered_implicit, centered_judge = implicit.centered(), judge.centered()
    valid = torch.ones_like(centered_implicit, dtype=torch.bool) if pair_mask is None else pair_mask
    threshold = max(margin, tie_eps)
    consistent = (
        (centered_implicit * centered_judge > 0)
        & (centered_implicit.abs() > threshold)
        & (centered_judge.abs() > threshold)
    )
    ties = (centered_implicit.abs() <= tie_eps) | (centered_judge.abs() <= tie_eps)
    return Selection(
        consistent=consistent & valid,
        first_chosen=centered_implicit > 0,
        ties=ties & valid,
        valid=valid,
    )


@torch.no_grad()
def select_judged(
    judge: Bernoulli,
    *,
    margin: float,
    tie_eps: float,
    pair_mask: torch.Tensor | None = None,
) -> Selection:
    """``scir.selection=all`` (selection off, an ablation): every pair the judge gives a label,
    |P_G − ½| > max(m, tie_eps), with the judge's label; ``consistent`` marks them.

    Args:
        judge: P_G per pair.
        margin: m, the minimum confidence |P_G − ½|.
        tie_eps: predictions within this of ½ carry no label.
        pair_mask: ``[n]`` bool; pairs outside it (fillers) are never selected. ``None``: all
            pairs are real.
    """
    centered = judge.centered()
    valid = torch.ones_like(centered, dtype=torch.bool) if pair_mask is None else pair_mask
    labelled = centered.abs() > max(margin, tie_eps)
    return Selection(
        consistent=labelled & valid,
        first_chosen=centered > 0,
        ties=(centered.abs() <= tie_eps) & valid,
        valid=valid,
    )
