"""Preference losses on labelled pairs: DPO, IPO, and the `dpo`/`srlm` modes (SCIR_SPEC §4, §6).

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

from megatron_scir.rewards.implicit import implicit_log_odds
from megatron_scir.rewards.judge import judge_preference

__all__ = [
    "PREF_LOSSES",
    "PREF_NORMALIZATIONS",
    "metric",
    "preference_terms",
    "normalize_pairs",
    "sft_loss",
    "dpo_loss",
    "ipo_loss",
    "labelled_pair_loss",
    "srlm_labels",
]

PREF_LOSSES = ("dpo", "ipo")
PREF_NORMALIZATIONS = ("pairs", "selected")


def pair_log_odds(
    logps: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    beta: float,
    length_normalize: bool,
    sft_weight: float,
    response_lengths: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """Δ_I ``[n]`` from (policy_1, policy_2, ref_1, ref_2) log-probs (SCIR_SPEC §1), after
    checking that the options needing response lengths got them."""
    if (length_normalize or sft_weight > 0) and response_lengths is None:
        raise ValueError("length_normalize and sft_weight > 0 need response_lengths=(len_1, len_2)")
    return implicit_log_odds(
        *logps, beta=beta, response_lengths=response_lengths if length_normalize else None
    )


def metric(total: torch.Tensor, count) -> torch.Tensor:
    """A ``(sum, count)`` metric value, detached, float32 ``[2]``."""
    total = total.detach().float().reshape(())
    count = torch.as_tensor(count, dtype=torch.float32, device=total.device).reshape(())
    return torch.stack([total, count])


def preference_terms(signed_log_odds: torch.Tensor, *, pref_loss: str, beta: float) -> torch.Tensor:
    """ℓ_pref(u) per pair (SCIR_SPEC §4).

    Args:
        signed_log_odds: ``[n]`` u = s · Δ_I, the implicit log-odds of the chosen response.
        pref_loss: ``dpo`` (−log σ(u), via ``logsigmoid``: finite and non-zero gradient for any
            finite u) or ``ipo`` ((u/β − 1/(2β))²).
        beta: β of the implicit reward (IPO's target margin is 1/(2β) in log-ratio units).

    Returns:
        ``[n]`` float32 per-pair losses.
    """
    u = signed_log_odds.float()
    if pref_loss == "dpo":
        return -F.logsigmoid(u)
    if pref_loss == "ipo":
        return (u / beta - 1.0 / (2.0 * beta)).square()
    raise ValueError(f"pref_loss={pref_loss!r} is not one of {PREF_LOSSES}")


def normalize_pairs(
    terms: torch.Tensor, selected: torch.Tensor, *, pref_normalization: str
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
    if pref_normalization == "pairs":
        return total / terms.numel()
    if pref_normalization == "selected":
        # A count, not a probability: with nothing selected the sum is 0 and so is the loss.
        return total / selected.sum().clamp(min=1).to(total.dtype)
    raise ValueError(
        f"pref_normalization={pref_normalization!r} is not one of {PREF_NORMALIZATIONS}"
    )


def sft_loss(
    policy_logps_1: torch.Tensor,
    policy_logps_2: torch.Tensor,
    response_lengths: tuple[torch.Tensor, torch.Tensor],
    *,
    first_chosen: torch.Tensor,
    selected: torch.Tensor,
    pref_normalization: str,
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


def _labelled_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    pref_loss: str,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    margins = implicit_log_odds(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta
    )
    loss = preference_terms(margins, pref_loss=pref_loss, beta=beta).mean()
    n = margins.numel()
    metrics = {
        "loss/pref": metric(loss, 1),
        "reward/margin": metric(margins.sum(), n),
        "reward/accuracy": metric((margins > 0).sum(), n),
    }
    return loss, metrics


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Standard DPO on labelled pairs: mean over pairs of −log σ(r(chosen) − r(rejected)).

    Args:
        policy_chosen_logps, policy_rejected_logps: ``[n]`` policy response log-probs.
        ref_chosen_logps, ref_rejected_logps: ``[n]`` reference response log-probs.
        beta: the DPO temperature β.

    Returns:
        ``(loss, metrics)``: scalar float32 loss; ``(sum, count)`` metrics ``loss/pref``,
        ``reward/margin``, ``reward/accuracy``.
    """
    return _labelled_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        pref_loss="dpo",
    )


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO on labelled pairs: mean over pairs of (h − 1/(2β))², h the log-ratio difference.

    Arguments and returns as :func:`dpo_loss`.
    """
    return _labelled_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        pref_loss="ipo",
    )


def labelled_pair_loss(
    policy_logps_1: torch.Tensor,
    policy_logps_2: torch.Tensor,
    ref_logps_1: torch.Tensor,
    ref_logps_2: torch.Tensor,
    pair_labels: torch.Tensor,
    *,
    beta: float = 0.1,
    pref_loss: str = "dpo",
    pref_normalization: str = "pairs",
    length_normalize: bool = False,
    response_lengths: tuple[torch.Tensor, torch.Tensor] | None = None,
    sft_weight: float = 0.0,
    pair_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The ``dpo`` and ``srlm`` modes: DPO/IPO with labels fixed before training (SCIR_SPEC §6).

    ``srlm`` labels come from the M_t judge when the pairs were built, ``dpo`` labels from the
    data; both arrive as ``pair_labels`` in the micro-batch. Unlabelled pairs (−1) contribute
    nothing and, with ``pref_normalization=pairs``, still count in the denominator.

    Args:
        policy_logps_1, policy_logps_2: ``[n]`` policy log-probs of y1 and y2.
        ref_logps_1, ref_logps_2: ``[n]`` reference log-probs of y1 and y2.
        pair_labels: ``[n]`` 1.0 where y1 ≻ y2, 0.0 where y2 ≻ y1, −1.0 unknown.
        beta: the DPO temperature β.
        pref_loss: ``dpo`` or ``ipo``.
        pref_normalization: ``pairs`` or ``selected`` (÷ labelled pairs).
        length_normalize: divide each log-ratio by its response length (SCIR_SPEC §1).
        response_lengths: ``([n], [n])`` lengths of y1 and y2; needed for length
            normalisation and the SFT term.
        sft_weight: weight of the per-token NLL of the chosen response (0 = off).
        pair_mask: ``[n]`` bool, False for filler pairs (no loss, no metrics; n unchanged).

    Returns:
        ``(loss, metrics)``: scalar float32 loss; ``(sum, count)`` metrics ``loss/total``,
        ``loss/pref`` (and ``loss/sft``), ``reward/margin`` and ``reward/accuracy`` (over
        labelled pairs), ``data/labelled_rate``.
    """
    delta = pair_log_odds(
        (policy_logps_1, policy_logps_2, ref_logps_1, ref_logps_2),
        beta=beta,
        length_normalize=length_normalize,
        sft_weight=sft_weight,
        response_lengths=response_lengths,
    )
    valid = torch.ones_like(delta, dtype=torch.bool) if pair_mask is None else pair_mask
    labelled = (pair_labels >= 0) & valid
    first_chosen = pair_labels > 0.5
    signed = torch.where(first_chosen, delta, -delta)
    pref = normalize_pairs(
        preference_terms(signed, pref_loss=pref_loss, beta=beta),
        labelled,
        pref_normalization=pref_normalization,
    )
    num_labelled = labelled.sum()
    metrics = {
        "loss/pref": metric(pref, 1),
        "reward/margin": metric(torch.where(labelled, signed, 0.0).sum(), num_labelled),
        "reward/accuracy": metric((labelled & (signed > 0)).sum(), num_labelled),
        "data/labelled_rate": metric(num_labelled, valid.sum()),
    }
    loss = pref
    if sft_weight > 0:
        sft = sft_loss(
            policy_logps_1,
            policy_logps_2,
            response_lengths,
            first_chosen=first_chosen,
            selected=labelled,
            pref_normalization=pref_normalization,
        )
        metrics["loss/sft"] = metric(sft, 1)
        loss = loss + sft_weight * sft
    metrics["loss/total"] = metric(loss, 1)
    return loss, metrics


@torch.no_grad()
def srlm_labels(
    judge_logits_12: torch.Tensor,
    judge_logits_21: torch.Tensor | None = None,
    *,
    position_debias: str = "mean_prob",
    drop_margin: float = 0.0,
) -> torch.Tensor:
    """SRLM's fixed labels from the M_t judge, computed once when the pairs are built (§6).

    Args:
        judge_logits_12, judge_logits_21: ``[n]`` the M_t judge's log-odds in both orders (see
            :func:`megatron_scir.rewards.judge.judge_preference`).
        position_debias: how the two orders combine (the same option as SCIR's).
        drop_margin: pairs with |P_G − ½| ≤ this get no label (``scir.srlm_drop_margin``).

    Returns:
        ``[n]`` float32 ``pair_labels``: 1.0 where y1 ≻ y2, 0.0 where y2 ≻ y1, −1.0 dropped.
    """
    log_p, log_q = judge_preference(
        judge_logits_12, judge_logits_21, position_debias=position_debias
    )
    centered = 0.5 * (log_p.exp() - log_q.exp())
    labels = (centered > 0).float()
    return torch.where(centered.abs() > drop_margin, labels, torch.full_like(labels, -1.0))
