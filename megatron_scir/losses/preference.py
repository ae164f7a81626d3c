"""Preference losses on labelled pairs: DPO/IPO terms and the `dpo`/`srlm` modes (SCIR_SPEC §4, §6).

The per-pair term is a function of the signed implicit log-odds ``u = s · Δ_I`` (s = +1 when
y1 is chosen, −1 when y2 is):

    dpo: ℓ(u) = −log σ(u)                 ipo: ℓ(u) = (u/β − 1/(2β))²

Metrics follow Megatron's reporting convention: every value is a float32 ``[2]`` tensor
``(sum, count)``; :func:`megatron_scir.parallel.reductions.reduce_metrics` adds them over
micro-batches and data-parallel ranks and divides once, so means with varying denominators
(e.g. over the consistent pairs only) are exact for the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_scir.config.choices import PrefLoss, PrefNormalization
from megatron_scir.losses.keys import LOSS_TOTAL
from megatron_scir.losses.options import LossOptions
from megatron_scir.rewards.implicit import implicit_log_odds

__all__ = [
    "metric",
    "pair_log_odds",
    "preference_terms",
    "normalize_pairs",
    "sft_loss",
    "labelled_pair_loss",
]


def pair_log_odds(
    logps: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    options: LossOptions,
    response_lengths: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """Δ_I ``[n]`` from (policy_1, policy_2, ref_1, ref_2) log-probs (SCIR_SPEC §1), after
    checking that the options needing response lengths got them."""
    if (options.length_normalize or options.sft_weight > 0) and response_lengths is None:
        raise ValueError("length_normalize and sft_weight > 0 need response_lengths=(len_1, len_2)")
    return implicit_log_odds(
        *logps,
        beta=options.beta,
        response_lengths=response_lengths if options.length_normalize else None,
    )


def metric(total: torch.Tensor, count) -> torch.Tensor:
    """A ``(sum, count)`` metric value, detached, float32 ``[2]``."""
    total = total.detach().float().reshape(())
    if isinstance(count, torch.Tensor):
        count = count.detach().to(torch.float32).reshape(())
    else:  # filled on the tensor's device: no host tensor and no copy per micro-batch
        count = torch.full_like(total, float(count))
    return torch.stack([total, count])


def _dpo_terms(u: torch.Tensor, beta: float) -> torch.Tensor:
    # logsigmoid: finite, with a non-zero gradient, for any finite u.
    return -F.logsigmoid(u)


def _ipo_terms(u: torch.Tensor, beta: float) -> torch.Tensor:
    return (u / beta - 1.0 / (2.0 * beta)).square()


_PREF_TERMS = {PrefLoss.DPO: _dpo_terms, PrefLoss.IPO: _ipo_terms}


def preference_terms(
    signed_log_odds: torch.Tensor, *, pref_loss: PrefLoss, beta: float
) -> torch.Tensor:
    """ℓ_pref(u) per pair (SCIR_SPEC §4).

    Args:
        signed_log_odds: ``[n]`` u = s · Δ_I, the implicit log-odds of the chosen response.
        pref_loss: ``dpo`` (−log σ(u)) or ``ipo`` ((u/β − 1/(2β))²).
        beta: β of the implicit reward (IPO's target margin is 1/(2β) in log-ratio units).

    Returns:
        ``[n]`` float32 per-pair losses.
    """
    return _PREF_TERMS[pref_loss](signed_log_odds.float(), beta)


def normalize_pairs(
    terms: torch.Tensor, selected: torch.Tensor, *, pref_normalization: PrefNormalization
) -> torch.Tensor:
    """Σ over the selected pairs, divided by all pairs or by the selected ones (SCIR_SPEC §4).

    Args:
        terms: ``[n]`` per-pair losses (values at unselected pairs are ignored, even if NaN).
        selected: ``[n]`` bool, the pairs that contribute.
        pref_normalization: ``pairs`` (÷ n: split-invariant) or ``selected`` (÷ number
            selected; 0 when none is).

    Returns:
        Scalar float32 loss.
    """
    total = torch.where(selected, terms, torch.zeros_like(terms)).sum()
    return _NORMALIZERS[pref_normalization](total, terms.numel(), selected)


_NORMALIZERS = {
    PrefNormalization.PAIRS: lambda total, num_pairs, selected: total / num_pairs,
    # A count, not a probability: with nothing selected the sum is 0 and so is the loss.
    PrefNormalization.SELECTED: lambda total, num_pairs, selected: (
        total / selected.sum().clamp(min=1).to(total.dtype)
    ),
}


def sft_loss(
    policy_logps_1: torch.Tensor,
    policy_logps_2: torch.Tensor,
    response_lengths: tuple[torch.Tensor, torch.Tensor],
    *,
    first_chosen: torch.Tensor,
    selected: torch.Tensor,
    pref_normalization: PrefNormalization,
) -> torch.Tensor:
    """Per-token negative log-likelihood of the chosen responses (SCIR_SPEC §5, ``sft_weight``).

    Args:
        policy_logps_1, policy_logps_2: ``[n]`` policy log-probs of y1 and y2.
        response_lengths: ``([n], [n])`` token counts of y1 and y2.
        first_chosen: ``[n]`` bool, y1 is the chosen response.
        selected: ``[n]`` bool, the pairs with a label.
        pref_normalization: normalised like L_pref (see :func:`normalize_pairs`).

    Returns:
        Scalar float32 ``Σ_selected −log πθ(chosen)/|chosen|`` over n (or over the selected).
    """
    chosen_logps = torch.where(first_chosen, policy_logps_1, policy_logps_2).float()
    chosen_lengths = torch.where(first_chosen, *response_lengths).float()
    return normalize_pairs(
        -chosen_logps / chosen_lengths, selected, pref_normalization=pref_normalization
    )


def labelled_pair_loss(
    policy_logps_1: torch.Tensor,
    policy_logps_2: torch.Tensor,
    ref_logps_1: torch.Tensor,
    ref_logps_2: torch.Tensor,
    pair_labels: torch.Tensor,
    *,
    options: LossOptions,
    response_lengths: tuple[torch.Tensor, torch.Tensor] | None = None,
    pair_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO/IPO on labelled pairs: the ``dpo`` and ``srlm`` modes (SCIR_SPEC §6).

    ``srlm`` labels come from the M_t judge when the pairs were built, ``dpo`` labels from the
    data; both arrive as ``pair_labels`` in the micro-batch. Unlabelled pairs (−1) contribute
    nothing and, with ``pref_normalization=pairs``, still count in the denominator. With every
    pair labelled y1 ≻ y2 this is standard DPO (or IPO) on (chosen, rejected) = (y1, y2).

    Args:
        policy_logps_1, policy_logps_2: ``[n]`` policy log-probs of y1 and y2.
        ref_logps_1, ref_logps_2: ``[n]`` reference log-probs of y1 and y2.
        pair_labels: ``[n]`` 1.0 where y1 ≻ y2, 0.0 where y2 ≻ y1, −1.0 unknown.
        options: reads ``beta``, ``pref_loss``, ``pref_normalization`` (``selected``: ÷ labelled
            pairs), ``length_normalize`` and ``sft_weight`` (per-token NLL of the chosen
            response; 0 = off).
        response_lengths: ``([n], [n])`` lengths of y1 and y2; needed for length
            normalisation and the SFT term.
        pair_mask: ``[n]`` bool, False for filler pairs (no loss, no metrics; n unchanged).

    Returns:
        ``(loss, metrics)``: scalar float32 loss; ``(sum, count)`` metrics ``loss/total``,
        ``loss/pref`` (and ``loss/sft``), ``reward/margin`` and ``reward/accuracy`` (over
        labelled pairs), ``data/labelled_rate``.
    """
    delta = pair_log_odds(
        (policy_logps_1, policy_logps_2, ref_logps_1, ref_logps_2), options, response_lengths
    )
    valid = torch.ones_like(delta, dtype=torch.bool) if pair_mask is None else pair_mask
    labelled = (pair_labels >= 0) & valid
    first_chosen = pair_labels > 0.5
    signed = torch.where(first_chosen, delta, -delta)
    pref = normalize_pairs(
        preference_terms(signed, pref_loss=options.pref_loss, beta=options.beta),
        labelled,
        pref_normalization=options.pref_normalization,
    )
    num_labelled = labelled.sum()
    metrics = {
        "loss/pref": metric(pref, 1),
        "reward/margin": metric(torch.where(labelled, signed, 0.0).sum(), num_labelled),
        "reward/accuracy": metric((labelled & (signed > 0)).sum(), num_labelled),
        "data/labelled_rate": metric(num_labelled, valid.sum()),
    }
    loss = pref
    if options.sft_weight > 0:
        sft = sft_loss(
            policy_logps_1,
            policy_logps_2,
            response_lengths,
            first_chosen=first_chosen,
            selected=labelled,
            pref_normalization=options.pref_normalization,
        )
        metrics["loss/sft"] = metric(sft, 1)
        loss = loss + options.sft_weight * sft
    metrics[LOSS_TOTAL] = metric(loss, 1)
    return loss, metrics
