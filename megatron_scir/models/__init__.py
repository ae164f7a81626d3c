"""Model construction: the only package that knows the Megatron-Core model class.

Public API (imported on first use, so ``import megatron_scir.models`` imports neither torch nor
Megatron-Core, and :mod:`megatron_scir.models.shapes` stays torch-free):

- :func:`build_gpt_model` / :func:`build_model_chunks`, :func:`transformer_config`,
  :func:`layer_spec`, :func:`te_available` — building one (virtual) pipeline stage;
- :func:`forward_last_stage` / :class:`OutputHead` — running it, and the last stage's logits;
- :func:`padded_vocab_size` — Megatron's padded vocabulary of a config (tables of every tensor
  shape and the dtype map: :mod:`megatron_scir.models.shapes`).
"""

from __future__ import annotations

from megatron_scir._lazy import lazy_exports

_EXPORTS = {
    "OutputHead": "megatron_scir.models.gpt",
    "build_gpt_model": "megatron_scir.models.gpt",
    "build_model_chunks": "megatron_scir.models.gpt",
    "forward_last_stage": "megatron_scir.models.gpt",
    "layer_spec": "megatron_scir.models.gpt",
    "padded_vocab_size": "megatron_scir.models.gpt",
    "te_available": "megatron_scir.models.gpt",
    "transformer_config": "megatron_scir.models.gpt",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
