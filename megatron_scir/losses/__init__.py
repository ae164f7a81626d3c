"""SCIR, DPO/IPO and the SRLM mode as pure functions: tensors in, ``(loss, metrics)`` out.

Float32 inside whatever the input dtype, log space, nothing clamped (SCIR_SPEC preamble).
Metrics are ``(sum, count)`` pairs; reduce them with
:func:`megatron_scir.parallel.reductions.reduce_metrics`.
"""

from megatron_scir.losses.bernoulli import Bernoulli, divergence, entropy, kl_divergence
from megatron_scir.losses.preference import (
    dpo_loss,
    ipo_loss,
    labelled_pair_loss,
    preference_terms,
    srlm_labels,
)
from megatron_scir.losses.scir import scir_loss, select_consistent

__all__ = [
    "Bernoulli",
    "divergence",
    "dpo_loss",
    "entropy",
    "ipo_loss",
    "kl_divergence",
    "labelled_pair_loss",
    "preference_terms",
    "scir_loss",
    "select_consistent",
    "srlm_labels",
]
