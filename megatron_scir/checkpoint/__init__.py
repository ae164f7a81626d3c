"""Megatron distributed checkpoints (torch_dist) of the model: written atomically, read in any
TP/PP layout.

Public API (imported on first use, so ``import megatron_scir.checkpoint`` imports neither torch
nor Megatron-Core):

- :func:`save_checkpoint` / :func:`load_checkpoint` (:class:`LoadedCheckpoint`) — collective
  save and load of this rank's model chunks and optimizer (:mod:`~megatron_scir.checkpoint.io`);
- :func:`read_metadata` (:class:`CheckpointMetadata`), :func:`check_same_model`,
  :func:`config_for_checkpoint`, :func:`checkpoint_assets`, :func:`checkpoint_tokenizer`,
  :func:`tokenizer_config_from_checkpoint` — what a checkpoint's ``scir_checkpoint.json`` and
  ``hf/`` fix (:mod:`~megatron_scir.checkpoint.metadata`);
- :func:`resolve_checkpoint`, :func:`is_complete`, :func:`latest_checkpoint` — finding
  megatron-scir, Megatron-LM and NeMo 2 checkpoints (:mod:`~megatron_scir.checkpoint.locate`);
- :mod:`~megatron_scir.checkpoint.layout` — what a torch_dist checkpoint holds, and pointing a
  model's sharded state dict at it (prefixes, padded vocabulary);
- :func:`verify_checkpoint` / :func:`check_checkpoint` (:class:`Verdict`),
  :func:`checkpoint_identity` — a checkpoint's files against the hashes written at save, and
  what a model loaded from it is known by (:mod:`~megatron_scir.checkpoint.verify`);
- :mod:`~megatron_scir.checkpoint.atomic` — ``<dir>.incomplete`` until complete (also used by the
  Hugging Face exporter);
- :class:`CheckpointError`.

This package imports none of ``data``, ``generation``, ``training`` or ``convert``.
"""

from __future__ import annotations

from megatron_scir._lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": "megatron_scir.checkpoint.errors",
    "INCOMPLETE_SUFFIX": "megatron_scir.checkpoint.atomic",
    "ASSETS_DIR": "megatron_scir.checkpoint.metadata",
    "METADATA_FILE": "megatron_scir.checkpoint.metadata",
    "CheckpointMetadata": "megatron_scir.checkpoint.metadata",
    "check_same_model": "megatron_scir.checkpoint.metadata",
    "checkpoint_assets": "megatron_scir.checkpoint.metadata",
    "checkpoint_tokenizer": "megatron_scir.checkpoint.metadata",
    "config_for_checkpoint": "megatron_scir.checkpoint.metadata",
    "read_metadata": "megatron_scir.checkpoint.metadata",
    "tokenizer_config_from_checkpoint": "megatron_scir.checkpoint.metadata",
    "checkpoint_identity": "megatron_scir.checkpoint.verify",
    "Verdict": "megatron_scir.checkpoint.verify",
    "check_checkpoint": "megatron_scir.checkpoint.verify",
    "verify_checkpoint": "megatron_scir.checkpoint.verify",
    "tokenizer_fingerprint": "megatron_scir.checkpoint.metadata",
    "is_complete": "megatron_scir.checkpoint.locate",
    "latest_checkpoint": "megatron_scir.checkpoint.locate",
    "resolve_checkpoint": "megatron_scir.checkpoint.locate",
    "LoadedCheckpoint": "megatron_scir.checkpoint.io",
    "load_checkpoint": "megatron_scir.checkpoint.io",
    "save_checkpoint": "megatron_scir.checkpoint.io",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
