"""Hugging Face ↔ Megatron-Core checkpoint conversion for Llama/Mistral/Qwen2/Qwen3 models.

Public API (imported on first use, so ``import megatron_scir.convert`` imports neither
Megatron-Core nor transformers):

- :func:`config_from_hf` — a Config whose model section comes from an HF ``config.json``;
- :func:`load_hf_into_model` — HF weights straight into this rank's model chunks (any TP/PP);
- :func:`convert_hf_to_mcore` / :func:`export_to_hf` — HF folder ↔ megatron-scir checkpoint;
- :data:`LLAMA_KEYMAP` and :func:`merge_qkv` / :func:`split_qkv` / :func:`merge_fc1` /
  :func:`split_fc1` — the declarative key map and its tensor helpers;
- :class:`ConversionError` (and :class:`CheckpointError`, from :mod:`megatron_scir.checkpoint`).
"""

from __future__ import annotations

from megatron_scir._lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": "megatron_scir.checkpoint.errors",
    "ConversionError": "megatron_scir.convert.errors",
    "LLAMA_KEYMAP": "megatron_scir.convert.keymap",
    "merge_fc1": "megatron_scir.convert.keymap",
    "merge_qkv": "megatron_scir.convert.keymap",
    "split_fc1": "megatron_scir.convert.keymap",
    "split_qkv": "megatron_scir.convert.keymap",
    "config_from_hf": "megatron_scir.convert.hf_config",
    "load_hf_into_model": "megatron_scir.convert.hf_to_mcore",
    "convert_hf_to_mcore": "megatron_scir.convert.hf_to_mcore",
    "export_to_hf": "megatron_scir.convert.mcore_to_hf",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
