"""Model construction: the only package that knows the Megatron-Core model class.

Importing this package imports Megatron-Core lazily (inside the functions).
"""

from megatron_scir.models.gpt import (
    OutputHead,
    build_gpt_model,
    build_model_chunks,
    forward_last_stage,
    layer_spec,
    padded_vocab_size,
    te_available,
    transformer_config,
)

__all__ = [
    "OutputHead",
    "build_gpt_model",
    "build_model_chunks",
    "forward_last_stage",
    "layer_spec",
    "padded_vocab_size",
    "te_available",
    "transformer_config",
]
