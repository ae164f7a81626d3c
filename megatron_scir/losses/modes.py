"""The loss modes (``scir.mode``, SCIR_SPEC §6) as one registry: what each mode means.

``LOSS_MODES[mode]`` is everything the rest of the package may know about a mode:

- ``judge_rows``: its training micro-batches carry judge rows and its loss reads the judge's
  log-odds (the layout, SCIR_SPEC §9);
- ``reference_judge``: the reference pass reads M_t's judge on every pair (SCIR_SPEC §7.3);
- ``labels``: where the pairs' preference labels come from (:class:`PairLabels`);
- ``loss``: the function the forward step calls.

Callers read these fields; nobody branches on a mode's name outside this registry, and nobody
rewrites ``scir.mode`` to switch judge rows on or off further down. A new mode is a loss function,
a registry entry and its :class:`~megatron_scir.config.choices.LossMode` member.

This module imports no torch (the planner and the layout read the registry): the loss
functions import their tensor math when first called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from megatron_scir.config.choices import LossMode

if TYPE_CHECKING:
    import torch

    from megatron_scir.losses.options import LossOptions

__all__ = ["LOSS_MODES", "LossModeSpec", "PairLabels", "PairTensors", "loss_mode"]


class PairLabels(StrEnum):
    """Where a mode's training labels come from."""

    NONE = "none"
    """Unlabeled pairs: the step itself decides which pairs and which side (SCIR's selection)."""
    JUDGE = "judge"
    """M_t's judge, fixed once in the reference pass (SRLM; unsure pairs are dropped)."""
    GIVEN = "given"
    """Labelled before training: by ``iteration.grader`` in ``scir iterate``, by the pairs
    file's ``label`` in ``scir train``."""


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
        prev_logps: ``([n], [n])`` log π_{t−1} of y1 and y2 (stored with the pairs under
            ``scir.implicit_reference=previous``), or ``None``.
    """

    policy_logps: tuple[torch.Tensor, torch.Tensor]
    ref_logps: tuple[torch.Tensor, torch.Tensor]
    pair_labels: torch.Tensor | None = None
    response_lengths: tuple[torch.Tensor, torch.Tensor] | None = None
    pair_mask: torch.Tensor | None = None
    judge_logits: tuple[torch.Tensor, torch.Tensor | None] | None = None
    prev_logps: tuple[torch.Tensor, torch.Tensor] | None = None


LossFunction = Callable[["PairTensors", "LossOptions"], "tuple[torch.Tensor, dict]"]


@dataclass(frozen=True)
class LossModeSpec:
    """One training objective and what it needs (see the module docstring).

    Attributes:
        judge_rows: training micro-batches carry judge rows; the loss reads ``judge_logits``.
        reference_judge: the reference pass reads M_t's judge (judge rows in its batches).
        labels: where the training labels come from.
        loss: ``loss(pairs, options) -> (scalar float32 loss, {key: (sum, count)} metrics)``.
    """

    judge_rows: bool
    reference_judge: bool
    labels: PairLabels
    loss: LossFunction

    @property
    def selects_pairs(self) -> bool:
        """The step chooses the pairs it trains on (the share it used is a training metric);
        otherwise every labelled pair is trained on."""
        return self.labels == PairLabels.NONE


def _scir(pairs: PairTensors, options: LossOptions) -> tuple[torch.Tensor, dict]:
    from megatron_scir.losses.scir import scir_loss  # lazy: keeps the registry torch-free

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
        implicit_ref_logps=pairs.prev_logps,
    )


def _labelled(pairs: PairTensors, options: LossOptions) -> tuple[torch.Tensor, dict]:
    from megatron_scir.losses.preference import labelled_pair_loss  # lazy: torch-free registry

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
    LossMode.SCIR: LossModeSpec(
        judge_rows=True, reference_judge=True, labels=PairLabels.NONE, loss=_scir
    ),
    # SCIR_SPEC §6: M_t's judge labels the pairs once (reference pass), then plain DPO/IPO.
    LossMode.SRLM: LossModeSpec(
        judge_rows=False, reference_judge=True, labels=PairLabels.JUDGE, loss=_labelled
    ),
    # DPO/IPO on labels given before training (the grader, or the file).
    LossMode.DPO: LossModeSpec(
        judge_rows=False, reference_judge=False, labels=PairLabels.GIVEN, loss=_labelled
    ),
}


def loss_mode(mode: str) -> LossModeSpec:
    """The registry entry of ``scir.mode`` (a validated config value or a LossMode member)."""
    return LOSS_MODES[LossMode(mode)]
