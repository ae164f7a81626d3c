"""The SCIR objective: inconsistency penalty + dynamic consistent-pair DPO (SCIR_SPEC §3–§5).

    L = L_pref + λ_cons · L_cons + λ_conf · L_conf (+ λ_sft · L_sft)

for n unlabeled pairs, from the implicit reward model's P_I (policy and reference log-probs) and
the generative judge's P_G (verdict log-odds). Pure: tensors in, ``(loss, metrics)`` out, float32
and log space inside whatever the input dtype, nothing clamped. Every TP rank of the last
pipeline stage computes the same values; Megatron's schedule averages the loss over
micro-batches and DDP over data-parallel ranks, which equals the global-batch mean because every
term is normalised by the call's n pairs (``pref_normalization=pairs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_scir.losses import bernoulli
from megatron_scir.losses.bernoulli import DIVERGENCES, Bernoulli, entropy
from megatron_scir.losses.preference import (
    PREF_LOSSES,
    PREF_NORMALIZATIONS,
    metric,
    normalize_pairs,
    pair_log_odds,
    preference_terms,
    sft_loss,
)
from megatron_scir.losses.scir_metrics import gold_metrics, length_metrics, selection_metrics
from megatron_scir.rewards.implicit import implicit_preference
from megatron_scir.rewards.judge import POSITION_DEBIAS, judge_preference

__all__ = ["CONSISTENCY_GRADS", "Selection", "select_consistent", "consistency_sides", "scir_loss"]

CONSISTENCY_GRADS = ("both", "confident_teacher", "judge_teacher", "implicit_teacher")


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

    Pairs outside ``pair_mask`` (``[n]`` bool, ``None`` = all) are never consistent or ties.
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


def consistency_sides(
    judge: Bernoulli, implicit: Bernoulli, *, consistency_grad: str
) -> tuple[Bernoulli, Bernoulli, torch.Tensor | None]:
    """Detach the teacher side of L_cons (SCIR_SPEC §3).

    Args:
        judge: P_G per pair.
        implicit: P_I per pair.
        consistency_grad: ``both`` (no detaching), ``judge_teacher`` / ``implicit_teacher``
            (that side always detached) or ``confident_teacher`` (per pair, the side with the
            larger |P − ½| is detached, the judge on ties).

    Returns:
        ``(judge, implicit, judge_teaches)``: the two sides to feed the divergence, and for
        ``confident_teacher`` the ``[n]`` bool mask of pairs where the judge is the teacher.
    """
    if consistency_grad == "both":
        return judge, implicit, None
    if consistency_grad == "judge_teacher":
        return judge.detach(), implicit, None
    if consistency_grad == "implicit_teacher":
        return judge, implicit.detach(), None
    if consistency_grad != "confident_teacher":
        raise ValueError(f"consistency_grad={consistency_grad!r} is not one of {CONSISTENCY_GRADS}")
    with torch.no_grad():
        judge_teaches = judge.centered().abs() >= implicit.centered().abs()
    return (
        judge.detach().where(judge_teaches, judge),
        implicit.where(judge_teaches, implicit.detach()),
        judge_teaches,
    )


def _check_options(divergence_kind, position_debias, consistency_grad, pref_loss, pref_norm):
    for name, value, choices in (
        ("divergence", divergence_kind, DIVERGENCES),
        ("position_debias", position_debias, POSITION_DEBIAS),
        ("consistency_grad", consistency_grad, CONSISTENCY_GRADS),
        ("pref_loss", pref_loss, PREF_LOSSES),
        ("pref_normalization", pref_norm, PREF_NORMALIZATIONS),
    ):
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not one of {choices}")


def _check_shapes(**tensors: torch.Tensor | None) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
        raise ValueError(f"every per-pair tensor must have the same shape [n]; got {shapes}")


def _loss_terms(
    delta: torch.Tensor,
    implicit: Bernoulli,
    judge: Bernoulli,
    selection: Selection,
    *,
    beta: float,
    divergence: str,
    consistency_grad: str,
    pref_loss: str,
    pref_normalization: str,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """L_cons, L_conf and L_pref (unweighted scalars) and the confident-teacher mask."""
    # SCIR_SPEC §3: the penalty trains the sides consistency_grad names; confidence trains both.
    judge_side, implicit_side, judge_teaches = consistency_sides(
        judge, implicit, consistency_grad=consistency_grad
    )
    divergences = bernoulli.divergence(judge_side, implicit_side, kind=divergence)
    entropies = entropy(judge) + entropy(implicit)
    # (1/n) Σ over the real pairs: a filler pair adds nothing but keeps n fixed (split-invariant).
    terms = {
        "loss/cons": torch.where(selection.valid, divergences, 0.0).sum() / delta.numel(),
        "loss/conf": torch.where(selection.valid, entropies, 0.0).sum() / delta.numel(),
    }
    # SCIR_SPEC §4: DPO on the agreed label of the consistent pairs; there s·Δ_I = |Δ_I|.
    signed_delta = torch.where(selection.first_chosen, delta, -delta)
    terms["loss/pref"] = normalize_pairs(
        preference_terms(signed_delta, pref_loss=pref_loss, beta=beta),
        selection.consistent,
        pref_normalization=pref_normalization,
    )
    return terms, judge_teaches


def scir_loss(
    policy_logps_1: torch.Tensor,
    policy_logps_2: torch.Tensor,
    ref_logps_1: torch.Tensor,
    ref_logps_2: torch.Tensor,
    judge_logits_12: torch.Tensor,
    judge_logits_21: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    consistency_weight: float = 1.0,
    confidence_weight: float = 0.1,
    divergence: str = "sym_kl",
    position_debias: str = "mean_prob",
    consistency_grad: str = "both",
    margin: float = 0.0,
    tie_eps: float = 1e-4,
    pref_loss: str = "dpo",
    pref_normalization: str = "pairs",
    gold_labels: torch.Tensor | None = None,
    length_normalize: bool = False,
    response_lengths: tuple[torch.Tensor, torch.Tensor] | None = None,
    sft_weight: float = 0.0,
    pair_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SCIR loss for n unlabeled pairs (SCIR_SPEC §1–§5).

    Args:
        policy_logps_1, policy_logps_2: ``[n]`` log πθ(y1|x), log πθ(y2|x) (response tokens).
        ref_logps_1, ref_logps_2: ``[n]`` log πref of the same responses (stored with the pairs).
        judge_logits_12: ``[n]`` judge log-odds that y1 ≻ y2 with y1 shown first; for pointwise
            judging (s(y1) − s(y2))/τ.
        judge_logits_21: ``[n]`` judge log-odds that y2 ≻ y1 with y2 shown first, or ``None``
            with one judge view (then P_G = σ(ℓ12)).
        beta: β of the implicit reward.
        consistency_weight: λ_cons.
        confidence_weight: λ_conf.
        divergence: D of L_cons: ``sym_kl``, ``js`` or ``mse``.
        position_debias: ``mean_prob``, ``mean_logit`` or ``none`` (see :mod:`rewards.judge`).
        consistency_grad: which side L_cons trains (see :func:`consistency_sides`).
        margin: m, the minimum confidence |P − ½| of both models for a consistent pair.
        tie_eps: predictions within this of ½ carry no label.
        pref_loss: ``dpo`` or ``ipo``.
        pref_normalization: ``pairs`` (÷ n) or ``selected`` (÷ consistent pairs of this call).
        gold_labels: ``[n]`` 1 where y1 ≻ y2, 0 where y2 ≻ y1, negative unknown; metrics only.
        length_normalize: divide each implicit log-ratio by its response length.
        response_lengths: ``([n], [n])`` token counts of y1 and y2; needed for length
            normalisation and the SFT term, and feed the chosen/rejected length metrics.
        sft_weight: λ_sft of the per-token NLL of the agreed chosen response (ours; SCIR_SPEC §5).
        pair_mask: ``[n]`` bool, False for filler pairs that only pad the last micro-batches of
            an epoch to k pairs: they add nothing to any term or metric, and every term is
            still divided by n (so micro-batches keep equal weight). ``None``: all pairs real.

    Returns:
        ``(loss, metrics)``: the scalar float32 loss, and ``(sum, count)`` float32 ``[2]``
        metrics keyed as in SCIR_SPEC §8 (reduce with
        :func:`megatron_scir.parallel.reductions.reduce_metrics`).
    """
    _check_options(divergence, position_debias, consistency_grad, pref_loss, pref_normalization)
    _check_shapes(
        policy_logps_1=policy_logps_1,
        policy_logps_2=policy_logps_2,
        ref_logps_1=ref_logps_1,
        ref_logps_2=ref_logps_2,
        judge_logits_12=judge_logits_12,
        judge_logits_21=judge_logits_21,
        gold_labels=gold_labels,
        pair_mask=pair_mask,
    )
    delta = pair_log_odds(
        (policy_logps_1, policy_logps_2, ref_logps_1, ref_logps_2),
        beta=beta,
        length_normalize=length_normalize,
        sft_weight=sft_weight,
        response_lengths=response_lengths,
    )
    implicit = Bernoulli(*implicit_preference(delta))
    judge = Bernoulli(
        *judge_preference(judge_logits_12, judge_logits_21, position_debias=position_debias)
    )
    selection = select_consistent(
        implicit, judge, margin=margin, tie_eps=tie_eps, pair_mask=pair_mask
    )

    terms, judge_teaches = _loss_terms(
        delta,
        implicit,
        judge,
        selection,
        beta=beta,
        divergence=divergence,
        consistency_grad=consistency_grad,
        pref_loss=pref_loss,
        pref_normalization=pref_normalization,
    )
    if sft_weight > 0:
        # Ours: SCIR_SPEC §5 names an SFT term on the agreed chosen response, not its form.
        terms["loss/sft"] = sft_loss(
            policy_logps_1,
            policy_logps_2,
            response_lengths,
            first_chosen=selection.first_chosen,
            selected=selection.consistent,
            pref_normalization=pref_normalization,
        )
    weights = {
        "loss/pref": 1.0,
        "loss/cons": consistency_weight,
        "loss/conf": confidence_weight,
        "loss/sft": sft_weight,
    }
    loss = sum(weights[key] * value for key, value in terms.items())
    terms["loss/total"] = loss

    metrics = {key: metric(value, 1) for key, value in terms.items()}
    metrics.update(selection_metrics(implicit, judge, delta, selection, judge_teaches))
    if response_lengths is not None:
        metrics.update(length_metrics(response_lengths, selection))
    if gold_labels is not None:
        metrics.update(gold_metrics(gold_labels, implicit, judge, selection, tie_eps=tie_eps))
    return loss, metrics
