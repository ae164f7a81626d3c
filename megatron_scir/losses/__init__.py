"""SCIR and the labelled DPO/IPO loss as pure functions: tensors in, ``(loss, metrics)`` out.

Float32 inside whatever the input dtype, log space, nothing clamped (SCIR_SPEC preamble).
Options come as one :class:`LossOptions`; ``LOSS_MODES`` maps ``scir.mode`` to its loss and
to whether its micro-batches carry judge rows. Metrics are ``(sum, count)`` pairs; reduce them
with :func:`megatron_scir.parallel.reductions.reduce_metrics`.
"""

from megatron_scir.losses.bernoulli import Bernoulli, divergence, entropy, kl_divergence
from megatron_scir.losses.modes import LOSS_MODES, LossModeSpec, PairTensors, loss_mode
from megatron_scir.losses.options import LossOptions
from megatron_scir.losses.preference import labelled_pair_loss, preference_terms
from megatron_scir.losses.scir import scir_loss
from megatron_scir.losses.selection import Selection, select_consistent

__all__ = [
    "LOSS_MODES",
    "Bernoulli",
    "LossModeSpec",
    "LossOptions",
    "PairTensors",
    "Selection",
    "divergence",
    "entropy",
    "kl_divergence",
    "labelled_pair_loss",
    "loss_mode",
    "preference_terms",
    "scir_loss",
    "select_consistent",
]
