"""SCIR and the labelled DPO/IPO loss as pure functions: tensors in, ``(loss, metrics)`` out.

Float32 inside whatever the input dtype, log space, nothing clamped (SCIR_SPEC preamble).
Options come as one :class:`LossOptions`; ``LOSS_MODES`` (``modes.py``) says what each
``scir.mode`` means and which loss it calls. Metrics are ``(sum, count)`` pairs; reduce them
with :func:`megatron_scir.parallel.reductions.reduce_metrics`. Names are imported on first use
(PEP 562), so the torch-free registry (``losses.modes``) and options can be read without torch.
"""

from __future__ import annotations

from megatron_scir._lazy import lazy_exports

_EXPORTS = {
    "Bernoulli": "bernoulli",
    "divergence": "bernoulli",
    "entropy": "bernoulli",
    "kl_divergence": "bernoulli",
    "LOSS_MODES": "modes",
    "LossModeSpec": "modes",
    "PairLabels": "modes",
    "PairTensors": "modes",
    "loss_mode": "modes",
    "LossOptions": "options",
    "labelled_pair_loss": "preference",
    "preference_terms": "preference",
    "scir_loss": "scir",
    "Selection": "selection",
    "select_consistent": "selection",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
