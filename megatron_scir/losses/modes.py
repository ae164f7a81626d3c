"""The loss modes (``scir.mode``, SCIR_SPEC §6) as one registry: what each reads and computes.

``LOSS_MODES[mode]`` says whether the mode's micro-batches carry judge rows (the DataModule's
layout, SCIR_SPEC §9) and which loss the forward step calls. Every loss takes the same
:class:`PairTensors` and :class:`~megatron_scir.losses.options.LossOptions`, so a new mode is a
function and a registry entry (plus its :class:`~megatron_scir.config.choices.LossMode` member),
and no caller branches on the mode's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_scir.config.choices import LossMode
from megatron_scir.losses.options import LossOptions
from megatron_scir.losses.preference import labelled_pair_loss
from megatron_scir.losses.scir import scir_loss

__all__ = ["LOSS_MODES", "LossModeSpec", "PairTensors", "loss_mode"]


@dataclass(frozen=True)
class PairTensors:
    """The per-pair tensors of one micro-batch of n pairs on the last pipeline stage.

    Attributes:
        policy_logps: ``([n], [n])`` log πθ of y1 and y2.
        ref_logps: ``([n], [n])`` log πref of y1 and y2 (stored with the pairs).
        pair_labels: ``[n]`` 1.0 where y1 ≻ y2, 0.0 where y2 ≻ y1, −1.0 unknown: the training
            labels of the labelled modes, gold labels (metrics only) for ``scir``.
        response_lengths: ``([n], [n])`` token counts of y1 and y2, or ``None``.
        pair_mask: ``[n]`` bool, False for filler pairs, or ``None`` (all real).
        judge_logits: ``(judge_logits_12 [n], judge_logits_21 [n] | None)``, the judge's
            log-odds that y1 ≻ y2, or ``None`` when the micro-batch's judge rows were not read.
    """

    policy_logps: tuple[torch.Tensor, torch.Tensor]
    ref_logps: tuple[torch.Tensor, torch.Tensor]
    pair_labels: torch.Tensor | None = None
    response_lengths: tuple[torch.Tensor, torch.Tensor] | None = None
    pair_mask: torch.Tensor | None = None
    judge_logits: tuple[torch.Tensor, torch.Tensor | None] | None = None


LossFunction = Callable[[PairTensors, LossOptions], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class LossModeSpec:
    """One training objective.

    Attributes:
        needs_judge: the micro-batches carry judge rows and the loss reads ``judge_logits``.
        loss: ``loss(pairs, options) -> (scalar float32 loss, {key: (sum, count)} metrics)``.
    """

    needs_judge: bool
    loss: LossFunction


def _scir(pairs: PairTensors, options: LossOptions) -> tuple[torch.Tensor, dict]:
    if pairs.judge_logits is None:
        raise ValueError("scir.mode=scir reads the judge: pass the judge's log-odds")
    return scir_loss(
        *pairs.policy_logps,
        *pairs.ref_logps,
        *pairs.judge_logits,
        options=options,
        gold_labels=pairs.pair_labels,
        response_lengths=pairs.response_lengths,
        pair_mask=pairs.pair_mask,
    )


def _labelled(pairs: PairTensors, options: LossOptions) -> tuple[torch.Tensor, dict]:
    if pairs.pair_labels is None:
        raise ValueError("the labelled modes (dpo, srlm) train on pair_labels: pass them")
    return labelled_pair_loss(
        *pairs.policy_logps,
        *pairs.ref_logps,
        pairs.pair_labels,
        options=options,
        response_lengths=pairs.response_lengths,
        pair_mask=pairs.pair_mask,
    )


LOSS_MODES: dict[LossMode, LossModeSpec] = {
    # SCIR_SPEC §3–§5: P_I and P_G made consistent; DPO on the pairs they agree on.
    LossMode.SCIR: LossModeSpec(needs_judge=True, loss=_scir),
    # SCIR_SPEC §6: labels fixed before training (by the M_t judge, or given): plain DPO/IPO.
    LossMode.SRLM: LossModeSpec(needs_judge=False, loss=_labelled),
    LossMode.DPO: LossModeSpec(needs_judge=False, loss=_labelled),
}


def loss_mode(mode: str) -> LossModeSpec:
    """The registry entry of ``scir.mode`` (a validated config value or a LossMode member)."""
    return LOSS_MODES[LossMode(mode)]
