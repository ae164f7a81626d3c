"""Tensor shapes and dtypes of a Llama-family model (Llama, Mistral, Qwen2, Qwen3), from its
config alone (no torch, no Megatron).

One table each for the global tensors of a Megatron checkpoint (:func:`mcore_tensor_shapes`) and
of a Hugging Face folder (:func:`hf_tensor_shapes`), Megatron's vocabulary padding
(:func:`padded_vocab_size`), and the one map of dtype names (:data:`DTYPE_NAMES`,
:data:`DTYPE_BYTES`, :func:`torch_dtype`). Imports only :mod:`megatron_scir.config`, so shapes
and sizes can be checked before torch is loaded (tested).

Symbols: L layers, H query heads, G query groups (KV heads), d head dim, h hidden, f FFN,
V vocabulary, V' the padded vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from megatron_scir.config import ConfigError, ModelConfig
from megatron_scir.config.choices import DTYPE_ALIASES, Dtype

if TYPE_CHECKING:
    import torch

# Hugging Face name templates; ``{i}`` stands for the layer index (shared with convert/keymap.py).
HF_LAYER = "model.layers.{i}."
HF_ATTN = HF_LAYER + "self_attn."
HF_MLP = HF_LAYER + "mlp."

DTYPE_NAMES: dict[str, Dtype] = {**{d.value: d for d in Dtype}, **DTYPE_ALIASES}
"""Every accepted spelling of a dtype (``bfloat16``, ``bf16``, …) → its canonical name."""
DTYPE_BYTES: dict[Dtype, int] = {Dtype.FLOAT32: 4, Dtype.BFLOAT16: 2, Dtype.FLOAT16: 2}
"""Bytes per element of each dtype."""


def dtype_name(name: str) -> Dtype:
    """The canonical name (``float32``/``bfloat16``/``float16``) of ``name`` or its alias.

    Raises:
        ConfigError: an unknown name, listing the accepted ones.
    """
    if name not in DTYPE_NAMES:
        raise ConfigError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of ``name`` (a :class:`Dtype` value or an alias); imports torch."""
    import torch  # lazy: models.shapes stays torch-free (scir plan reads it)

    return getattr(torch, dtype_name(name).value)


def padded_vocab_size(vocab_size: int, make_vocab_size_divisible_by: int, tp_size: int) -> int:
    """Megatron's vocabulary padding: V rounded up to a multiple of ``divisible_by × tp_size``.

    The padded rows of the embedding and output layer are never produced by the tokenizer; each
    tensor-parallel rank holds an equal ``V' / tp_size`` slice of the vocabulary.
    """
    if min(vocab_size, make_vocab_size_divisible_by, tp_size) <= 0:
        raise ConfigError(
            f"vocab padding needs positive sizes (vocab {vocab_size}, "
            f"divisible_by {make_vocab_size_divisible_by}, tp {tp_size})"
        )
    unit = make_vocab_size_divisible_by * tp_size
    return -(-vocab_size // unit) * unit


def mcore_tensor_shapes(m: ModelConfig, *, padded_vocab: int) -> dict[str, tuple[int, ...]]:
    """Global shape of every Megatron checkpoint key (the TP=1 tensor, whatever the layout).

    Per-layer keys are stacked over layers: ``[L, ...]``. ``linear_qkv`` is ``[(H + 2G)·d, h]``
    per layer, ``linear_fc1`` ``[2f, h]`` (gate and up); the word embeddings and output layer
    ``[padded_vocab, h]``. A tied model (``share_embeddings_and_output_weights``) has no
    ``output_layer.weight``: Megatron saves the last stage's copy under the embeddings' key.
    ``add_qkv_bias`` adds ``linear_qkv.bias`` ``[(H + 2G)·d]`` per layer, ``qk_layernorm``
    ``q_layernorm.weight`` and ``k_layernorm.weight`` ``[d]`` per layer.
    """
    heads, groups, d = m.num_attention_heads, m.num_query_groups, m.head_dim
    h, f, layers = m.hidden_size, m.ffn_hidden_size, m.num_layers
    attn = "decoder.layers.self_attention."
    shapes = {
        "embedding.word_embeddings.weight": (padded_vocab, h),
        attn + "linear_qkv.layer_norm_weight": (layers, h),
        attn + "linear_qkv.weight": (layers, (heads + 2 * groups) * d, h),
    }
    if m.add_qkv_bias:
        shapes[attn + "linear_qkv.bias"] = (layers, (heads + 2 * groups) * d)
    if m.qk_layernorm:
        shapes[attn + "q_layernorm.weight"] = (layers, d)
        shapes[attn + "k_layernorm.weight"] = (layers, d)
    shapes |= {
        attn + "linear_proj.weight": (layers, h, heads * d),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight": (layers, h),
        "decoder.layers.mlp.linear_fc1.weight": (layers, 2 * f, h),
        "decoder.layers.mlp.linear_fc2.weight": (layers, h, f),
        "decoder.final_layernorm.weight": (h,),
    }
    if not m.share_embeddings_and_output_weights:
        shapes["output_layer.weight"] = (padded_vocab, h)
    return shapes


def hf_tensor_shapes(m: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the Hugging Face Llama/Mistral/Qwen2/Qwen3 model and its shape, in the
    order of the conversion key map.

    The vocabulary is unpadded (``[V, h]``); ``lm_head.weight`` is absent when the embeddings
    are tied (``share_embeddings_and_output_weights``, HF's ``tie_word_embeddings``). Qwen2's
    ``add_qkv_bias`` adds ``q_proj.bias`` ``[H·d]``, ``k_proj.bias`` and ``v_proj.bias``
    ``[G·d]``; Qwen3's ``qk_layernorm`` adds ``q_norm.weight`` and ``k_norm.weight`` ``[d]``.
    """
    heads, groups, d = m.num_attention_heads, m.num_query_groups, m.head_dim
    h, f = m.hidden_size, m.ffn_hidden_size
    per_layer = {
        HF_LAYER + "input_layernorm.weight": (h,),
        HF_ATTN + "q_proj.weight": (heads * d, h),
        HF_ATTN + "k_proj.weight": (groups * d, h),
        HF_ATTN + "v_proj.weight": (groups * d, h),
    }
    if m.add_qkv_bias:
        per_layer[HF_ATTN + "q_proj.bias"] = (heads * d,)
        per_layer[HF_ATTN + "k_proj.bias"] = (groups * d,)
        per_layer[HF_ATTN + "v_proj.bias"] = (groups * d,)
    if m.qk_layernorm:
        per_layer[HF_ATTN + "q_norm.weight"] = (d,)
        per_layer[HF_ATTN + "k_norm.weight"] = (d,)
    per_layer |= {
        HF_ATTN + "o_proj.weight": (h, heads * d),
        HF_LAYER + "post_attention_layernorm.weight": (h,),
        HF_MLP + "gate_proj.weight": (f, h),
        HF_MLP + "up_proj.weight": (f, h),
        HF_MLP + "down_proj.weight": (h, f),
    }
    shapes = {"model.embed_tokens.weight": (m.vocab_size, h)}
    for layer in range(m.num_layers):
        shapes.update({name.format(i=layer): shape for name, shape in per_layer.items()})
    shapes["model.norm.weight"] = (h,)
    if not m.share_embeddings_and_output_weights:
        shapes["lm_head.weight"] = (m.vocab_size, h)
    return shapes
