"""The one recipe: which model, which data, which step, for every command and the loop.

- :mod:`.model`: :class:`ModelSource` (a checkpoint, a Hugging Face folder or a random init),
  its one identity string, the job's config resolved from it, and :func:`load_model`, the one
  place that builds a layout's chunks and loads weights into them.
- :mod:`.stages`: the reference stage, the train stage (seed SFT or SCIR/DPO/SRLM) and the
  consistency read-out; each builds its micro-batch layout once, from the loss mode's spec, and
  hands it to the DataModule, the forward step and the reference pass.
- :mod:`.jobs`: ``scir train`` / ``scir sft`` / ``scir generate`` top to bottom (config →
  world → model → stage), so that the ``cli`` modules only parse and return an exit code.

Names are imported on first use (PEP 562): importing this package imports no torch.
"""

from __future__ import annotations

from megatron_scir._lazy import lazy_exports

_EXPORTS = {
    "ModelSource": "model",
    "load_model": "model",
    "load_run_config": "model",
    "consistency_rate": "stages",
    "reference_stage": "stages",
    "train_stage": "stages",
    "generate_job": "jobs",
    "train_job": "jobs",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
