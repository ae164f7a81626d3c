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

import torch

from megatron_scir.config.choices import ConsistencyGrad, ImplicitReference, PairSelection
from megatron_scir.losses.bernoulli import Bernoulli, divergence, entropy
from megatron_scir.losses.keys import LOSS_TOTAL, SELECTED_RATE
from megatron_scir.losses.options import LossOptions
from megatron_scir.losses.preference import (
    metric,
    normalize_pairs,
    pair_log_odds,
    preference_terms,
    sft_loss,
)
from megatron_scir.losses.scir_metrics import gold_metrics, length_metrics, selection_metrics
from megatron_scir.losses.selection import Selection, select_consistent, select_judged
from megatron_scir.rewards.implicit import implicit_preference
from megatron_scir.rewards.judge import judge_preference

__all__ = ["consistency_sides", "scir_loss"]


def _confident_teacher(judge: Bernoulli, implicit: Bernoulli):
    with torch.no_grad():
        judge_teaches = judge.centered().abs() >= implicit.centered().abs()
    return (
        judge.detach().where(judge_teaches, judge),
        implicit.where(judge_teaches, implicit.detach()),
        judge_teaches,
    )


_TEACHERS = {
    ConsistencyGrad.BOTH: lambda judge, implicit: (judge, implicit, None),
    ConsistencyGrad.JUDGE_TEACHER: lambda judge, implicit: (judge.detach(), implicit, None),
    ConsistencyGrad.IMPLICIT_TEACHER: lambda judge, implicit: (judge, implicit.detach(), None),
    ConsistencyGrad.CONFIDENT_TEACHER: _confident_teacher,
}


def consistency_sides(
    judge: Bernoulli, implicit: Bernoulli, *, consistency_grad: ConsistencyGrad
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
    return _TEACHERS[consistency_grad](judge, implicit)


def _check_shapes(**tensors: torch.Tensor | None) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
        raise ValueError(f"every per-pair tensor must have the same shape [n]; got {shapes}")


def _loss_terms(
    delta: torch.Tensor,
    implicit: Bernoulli,
    judge: Bernoulli,
    selection: Selection,
    options: LossOptions,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """L_cons, L_conf and L_pref (unweighted scalars) and the confident-teacher mask."""
    # SCIR_SPEC §3: the penalty trains the sides consistency_grad names; confidence trains both.
    judge_side, implicit_side, judge_teaches = consistency_sides(
        judge, implicit, consistency_grad=options.consistency_grad
    )
    divergences = divergence(judge_side, implicit_side, kind=options.divergence)
    entropies = entropy(judge) + entropy(implicit)
    # (1/n) Σ over the real pairs: a filler pair adds nothing but keeps n fixed (split-invariant).
    terms = {
        "loss/cons": torch.where(selection.valid, divergences, 0.0).sum() / delta.numel(),
        "loss/conf": torch.where(selection.valid, entropies, 0.0).sum() / delta.numel(),
    }
    # SCIR_SPEC §4: DPO on the agreed label of the consistent pairs; there s·Δ_I = |Δ_I|.
    signed_delta = torch.where(selection.first_chosen, delta, -delta)
    terms["loss/pref"] = normalize_pairs(
        preference_terms(signed_delta, pref_loss=options.pref_loss, beta=options.beta),
        selection.consistent,
        pref_normalization=options.pref_normalization,
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
    options: LossOptions,
    gold_labels: torch.Tensor | None = None,
    response_lengths: tuple[torch.Tensor, torch.Tensor] | None = None,
    pair_mask: torch.Tensor | None = None,
    implicit_ref_logps: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SCIR loss for n unlabeled pairs (SCIR_SPEC §1–§5).

    Args:
        policy_logps_1, policy_logps_2: ``[n]`` log πθ(y1|x), log πθ(y2|x) (response tokens).
        ref_logps_1, ref_logps_2: ``[n]`` log πref of the same responses (stored with the pairs).
        judge_logits_12: ``[n]`` judge log-odds that y1 ≻ y2 with y1 shown first; for pointwise
            judging (s(y1) − s(y2))/τ.
        judge_logits_21: ``[n]`` judge log-odds that y2 ≻ y1 with y2 shown first, or ``None``
            with one judge view (then P_G = σ(ℓ12)).
        options: β, the weights λ_cons / λ_conf / λ_sft, the divergence, position debiasing,
            consistency_grad, margin, tie_eps, pref_loss, pref_normalization and
            length_normalize (see :class:`~megatron_scir.losses.options.LossOptions`).
        gold_labels: ``[n]`` 1 where y1 ≻ y2, 0 where y2 ≻ y1, negative unknown; metrics only.
        response_lengths: ``([n], [n])`` token counts of y1 and y2; needed for length
            normalisation and the SFT term, and feed the chosen/rejected length metrics.
        pair_mask: ``[n]`` bool, False for filler pairs that only pad the last micro-batches of
            an epoch to k pairs: they add nothing to any term or metric, and every term is
            still divided by n (so micro-batches keep equal weight). ``None``: all pairs real.
        implicit_ref_logps: ``([n], [n])`` log π_{t−1} of y1 and y2, the implicit reward's
            reference under ``implicit_reference=previous`` (required there, unused otherwise);
            the DPO term keeps ``ref_logps``.

    Returns:
        ``(loss, metrics)``: the scalar float32 loss, and ``(sum, count)`` float32 ``[2]``
        metrics keyed as in SCIR_SPEC §8 (reduce with
        :func:`megatron_scir.parallel.reductions.reduce_metrics`).
    """
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
    policy = (policy_logps_1, policy_logps_2)
    # Δ of the DPO term: against πref = M_t (SCIR_SPEC §1)
    delta = pair_log_odds((*policy, ref_logps_1, ref_logps_2), options, response_lengths)
    delta_implicit = delta
    if options.implicit_reference == ImplicitReference.PREVIOUS:
        if implicit_ref_logps is None:
            raise ValueError(
                "scir.implicit_reference=previous reads log π_{t-1}: pass implicit_ref_logps"
            )
        _check_shapes(implicit_ref_logps_1=implicit_ref_logps[0], policy_logps_1=policy_logps_1)
        delta_implicit = pair_log_odds((*policy, *implicit_ref_logps), options, response_lengths)
    implicit = Bernoulli(*implicit_preference(delta_implicit))
    judge = Bernoulli(
        *judge_preference(judge_logits_12, judge_logits_21, position_debias=options.position_debias)
    )
    agreement = select_consistent(
        implicit, judge, margin=options.margin, tie_eps=options.tie_eps, pair_mask=pair_mask
    )
    selection = agreement
    if options.selection == PairSelection.ALL:
        selection = select_judged(
            judge, margin=options.margin, tie_eps=options.tie_eps, pair_mask=pair_mask
        )

    terms, judge_teaches = _loss_terms(delta, implicit, judge, selection, options)
    if options.sft_weight > 0:
        # Ours: SCIR_SPEC §5 names an SFT term on the agreed chosen response, not its form.
        terms["loss/sft"] = sft_loss(
            policy_logps_1,
            policy_logps_2,
            response_lengths,
            first_chosen=selection.first_chosen,
            selected=selection.consistent,
            pref_normalization=options.pref_normalization,
        )
    weights = {
        "loss/pref": 1.0,
        "loss/cons": options.consistency_weight,
        "loss/conf": options.confidence_weight,
        "loss/sft": options.sft_weight,
    }
    loss = sum(weights[key] * value for key, value in terms.items())
    terms[LOSS_TOTAL] = loss

    metrics = {key: metric(value, 1) for key, value in terms.items()}
    # the consistency metrics are the two models' agreement whatever the DPO term trained on
    metrics.update(selection_metrics(implicit, judge, delta_implicit, agreement, judge_teaches))
    metrics[SELECTED_RATE] = metric(selection.consistent.sum(), selection.valid.sum())
    if response_lengths is not None:
        metrics.update(length_metrics(response_lengths, selection))
    if gold_labels is not None:
        metrics.update(
            gold_metrics(gold_labels, implicit, judge, agreement, tie_eps=options.tie_eps)
        )
    return loss, metrics
