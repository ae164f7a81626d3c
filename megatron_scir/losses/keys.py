"""The metric keys of the losses that other code reads back (pure constants, no imports).

The losses emit many ``(sum, count)`` metrics; these are the ones a caller looks up by name: the
progress bar and the CLI show :data:`LOSS_TOTAL`, the trainer skips a step when any
:data:`LOSS_PREFIX` metric is NaN/inf, and the iteration driver reads
:data:`CONSISTENCY_RATE` back from the step log. The training layer re-exports them from
:mod:`megatron_scir.training.metrics_log`.
"""

from __future__ import annotations

__all__ = ["CONSISTENCY_RATE", "LOSS_PREFIX", "LOSS_TOTAL", "SELECTED_RATE"]

LOSS_PREFIX = "loss/"
"""Every loss term's key starts with this (``loss/pref``, ``loss/sft``, ...)."""
LOSS_TOTAL = "loss/total"
"""The optimised loss of every mode and stage."""
CONSISTENCY_RATE = "scir/consistency_rate"
"""The fraction of valid pairs on which the implicit reward and the judge agree (SCIR_SPEC §8)."""
SELECTED_RATE = "scir/selected_rate"
"""The fraction of valid pairs SCIR's DPO term trained on: the consistent ones, or with
``scir.selection=all`` every pair the judge labels."""
