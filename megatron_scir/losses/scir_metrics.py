"""The SCIR diagnostics of SCIR_SPEC §8 as ``(sum, count)`` metrics.

Each value is a float32 ``[2]`` tensor ``(sum, count)`` (Megatron's reporting convention), so
the mean over the global batch is ``Σ sums / Σ counts`` however the batch was split over
micro-batches and data-parallel ranks. Keys ending in ``_sqmean`` are second moments about ½
(E[(p − ½)²]; float32 sums of p² would cancel to noise when P sits near ½) from which
:func:`megatron_scir.parallel.reductions.reduce_metrics` derives the ``_std`` keys.
"""

from __future__ import annotations

import torch

from megatron_scir.losses.bernoulli import Bernoulli, probability_difference
from megatron_scir.losses.keys import CONSISTENCY_RATE
from megatron_scir.losses.preference import metric
from megatron_scir.losses.selection import Selection

__all__ = ["selection_metrics", "length_metrics", "gold_metrics"]


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, values.float(), 0.0).sum()


def selection_metrics(
    implicit: Bernoulli,
    judge: Bernoulli,
    delta: torch.Tensor,
    selection: Selection,
    judge_teaches: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """Agreement, ties, P_I / P_G moments, |P_I − P_G| and the reward margin of the agreed label.

    Args:
        implicit: P_I per pair.
        judge: P_G per pair.
        delta: ``[n]`` Δ_I.
        selection: the consistent pairs and their labels.
        judge_teaches: ``[n]`` bool for ``confident_teacher`` (the judge is the teacher), else
            ``None``.

    Returns:
        ``scir/consistency_rate``, ``scir/ties``, ``scir/p_implicit_mean``,
        ``scir/p_implicit_sqmean``, ``scir/p_judge_mean``, ``scir/p_judge_sqmean``,
        ``scir/p_abs_diff``, ``reward/margin`` (mean s·Δ_I over consistent pairs) and, with a
        confident teacher, ``scir/judge_teacher_rate``.
    """
    with torch.no_grad():
        valid, consistent = selection.valid, selection.consistent
        n = valid.sum()
        p_implicit, p_judge = implicit.p, judge.p
        abs_diff = probability_difference(judge, implicit).abs()
        signed = torch.where(selection.first_chosen, delta, -delta)
        metrics = {
            CONSISTENCY_RATE: metric(consistent.sum(), n),
            "scir/ties": metric(selection.ties.sum(), n),
            "scir/p_implicit_mean": metric(_masked_sum(p_implicit, valid), n),
            "scir/p_implicit_sqmean": metric(_masked_sum((p_implicit - 0.5).square(), valid), n),
            "scir/p_judge_mean": metric(_masked_sum(p_judge, valid), n),
            "scir/p_judge_sqmean": metric(_masked_sum((p_judge - 0.5).square(), valid), n),
            "scir/p_abs_diff": metric(_masked_sum(abs_diff, valid), n),
            "reward/margin": metric(_masked_sum(signed, consistent), consistent.sum()),
        }
        if judge_teaches is not None:
            metrics["scir/judge_teacher_rate"] = metric(_masked_sum(judge_teaches, valid), n)
    return metrics


def length_metrics(
    response_lengths: tuple[torch.Tensor, torch.Tensor], selection: Selection
) -> dict[str, torch.Tensor]:
    """Mean length of the agreed chosen and rejected responses over the consistent pairs.

    Args:
        response_lengths: ``([n], [n])`` token counts of y1 and y2.
        selection: the consistent pairs and their labels.

    Returns:
        ``scir/chosen_length`` and ``scir/rejected_length``.
    """
    lengths_1, lengths_2 = (lengths.float() for lengths in response_lengths)
    chosen = torch.where(selection.first_chosen, lengths_1, lengths_2)
    rejected = torch.where(selection.first_chosen, lengths_2, lengths_1)
    consistent = selection.consistent
    count = consistent.sum()
    return {
        "scir/chosen_length": metric(torch.where(consistent, chosen, 0.0).sum(), count),
        "scir/rejected_length": metric(torch.where(consistent, rejected, 0.0).sum(), count),
    }


def gold_metrics(
    gold_labels: torch.Tensor,
    implicit: Bernoulli,
    judge: Bernoulli,
    selection: Selection,
    *,
    tie_eps: float,
) -> dict[str, torch.Tensor]:
    """Accuracy against gold labels of label_I, label_G and the agreed label (SCIR_SPEC §8).

    Each accuracy counts the gold-labelled pairs on which that predictor gives a label: outside
    ``tie_eps`` of ½ for label_I / label_G, the consistent pairs for the agreed label.

    Args:
        gold_labels: ``[n]`` 1 where y1 ≻ y2, 0 where y2 ≻ y1, negative where unknown.
        implicit: P_I per pair.
        judge: P_G per pair.
        selection: the consistent pairs and their labels.
        tie_eps: predictions within this of ½ carry no label.

    Returns:
        ``gold/accuracy_implicit``, ``gold/accuracy_judge``, ``gold/accuracy_agreed``.
    """
    with torch.no_grad():
        known = (gold_labels >= 0) & selection.valid
        gold_first = gold_labels > 0.5
        metrics = {}
        for key, centered in (
            ("gold/accuracy_implicit", implicit.centered()),
            ("gold/accuracy_judge", judge.centered()),
        ):
            counted = known & (centered.abs() > tie_eps)
            correct = counted & ((centered > 0) == gold_first)
            metrics[key] = metric(correct.sum(), counted.sum())
        counted = known & selection.consistent
        correct = counted & (selection.first_chosen == gold_first)
        metrics["gold/accuracy_agreed"] = metric(correct.sum(), counted.sum())
    return metrics
