"""Hugging Face Llama/Mistral/Qwen2/Qwen3 ↔ Megatron-Core: the declarative key map and its helpers.

The Megatron side of the map is the **checkpoint key** of ``GPTModel.sharded_state_dict()``, not a
module name: one key per tensor for every TP/PP layout, with the layers stacked on a leading axis
(``decoder.layers.self_attention.linear_qkv.weight`` is ``[L, (H + 2G)·d, h]`` in a checkpoint).
Both layer specs use the same keys: Transformer Engine fuses the norms into its linear layers
(parameters ``linear_qkv.layer_norm_weight`` and ``linear_fc1.layer_norm_weight``) and the local
spec maps its ``input_layernorm`` / ``pre_mlp_layernorm`` onto those names when it builds its
sharded state dict. A key's global tensor is the TP=1 tensor:

- ``linear_qkv``: per query group g, ``[the H/G query heads of g; k_g; v_g]``, so a TP split by
  rows hands each rank whole groups; Qwen2's bias (``add_qkv_bias``) is interleaved the same way;
- Qwen3's QK-norm (``qk_layernorm``): ``q_layernorm`` / ``k_layernorm`` ``[d]`` are HF's
  ``q_norm`` / ``k_norm``, one weight shared by every head, replicated over TP;
- ``linear_fc1``: ``[gate; up]`` (Megatron shards gate and up separately: rank r holds
  ``[gate_r; up_r]``);
- word embeddings and output layer: the vocabulary, padded with zero rows to Megatron's padded
  size (a multiple of ``make_vocab_size_divisible_by × TP``); a tied model has the embeddings
  alone (``lm_head.weight`` and ``output_layer.weight`` absent, :func:`iter_tensor_maps`).

The global shape of every key (and of every Hugging Face tensor) is in
:mod:`megatron_scir.models.shapes`.

Symbols: H query heads, G query groups (KV heads), d head dim, h hidden, f FFN, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from megatron_scir.config import ModelConfig
from megatron_scir.convert.errors import ConversionError
from megatron_scir.models.shapes import HF_ATTN, HF_LAYER, HF_MLP


@dataclass(frozen=True)
class TensorMap:
    """One Megatron checkpoint tensor and the Hugging Face tensors it is made of."""

    mcore: str
    """Checkpoint key (layer-stacked when it starts with ``decoder.layers.``)."""
    hf: tuple[str, ...]
    """Hugging Face names; ``{i}`` stands for the layer index."""
    kind: str
    """copy, qkv (GQA-interleaved q/k/v), fc1 ([gate; up]) or vocab (rows padded)."""
    needs: str | None = None
    """The :class:`ModelConfig` flag the tensor exists under (None: every model has it)."""

    @property
    def per_layer(self) -> bool:
        return self.mcore.startswith("decoder.layers.")

    def hf_names(self, layer: int | None = None) -> tuple[str, ...]:
        """The Hugging Face names for ``layer`` (None for tensors outside the layers)."""
        return tuple(name.format(i=layer) for name in self.hf)


LLAMA_KEYMAP: tuple[TensorMap, ...] = (
    TensorMap("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab"),
    TensorMap(
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight",
        (HF_LAYER + "input_layernorm.weight",),
        "copy",
    ),
    TensorMap(
        "decoder.layers.self_attention.linear_qkv.weight",
        (HF_ATTN + "q_proj.weight", HF_ATTN + "k_proj.weight", HF_ATTN + "v_proj.weight"),
        "qkv",
    ),
    TensorMap(
        "decoder.layers.self_attention.linear_qkv.bias",
        (HF_ATTN + "q_proj.bias", HF_ATTN + "k_proj.bias", HF_ATTN + "v_proj.bias"),
        "qkv",
        needs="add_qkv_bias",
    ),
    TensorMap(
        "decoder.layers.self_attention.q_layernorm.weight",
        (HF_ATTN + "q_norm.weight",),
        "copy",
        needs="qk_layernorm",
    ),
    TensorMap(
        "decoder.layers.self_attention.k_layernorm.weight",
        (HF_ATTN + "k_norm.weight",),
        "copy",
        needs="qk_layernorm",
    ),
    TensorMap(
        "decoder.layers.self_attention.linear_proj.weight", (HF_ATTN + "o_proj.weight",), "copy"
    ),
    TensorMap(
        "decoder.layers.mlp.linear_fc1.layer_norm_weight",
        (HF_LAYER + "post_attention_layernorm.weight",),
        "copy",
    ),
    TensorMap(
        "decoder.layers.mlp.linear_fc1.weight",
        (HF_MLP + "gate_proj.weight", HF_MLP + "up_proj.weight"),
        "fc1",
    ),
    TensorMap("decoder.layers.mlp.linear_fc2.weight", (HF_MLP + "down_proj.weight",), "copy"),
    TensorMap("decoder.final_layernorm.weight", ("model.norm.weight",), "copy"),
    TensorMap("output_layer.weight", ("lm_head.weight",), "vocab"),
)
"""Every tensor a model of the Llama family may have, in Hugging Face order (embeddings, layers,
norm, head); :func:`iter_tensor_maps` gives those of one model."""

BY_MCORE_KEY: dict[str, TensorMap] = {entry.mcore: entry for entry in LLAMA_KEYMAP}
TIED_KEY = "output_layer.weight"
"""The tensor a tied model shares with ``embedding.word_embeddings.weight`` (absent there)."""

# Module parameter names that differ from the checkpoint key (besides the layer index): the local
# spec keeps separate norm modules, Transformer Engine's names equal the keys.
_LOCAL_NORM_NAMES = {
    "decoder.layers.self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "decoder.layers.mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}


def parameter_name(key: str, spec: str, layer: int | None = None) -> str:
    """The module parameter name of checkpoint ``key`` in a model of layer ``spec``.

    Args:
        key: a checkpoint key of :data:`LLAMA_KEYMAP`.
        spec: ``local``/``sdpa`` (separate norm modules) or ``te`` (norms fused into linears).
        layer: the layer index within the module (per-layer keys only).
    """
    if not key.startswith("decoder.layers."):
        return key
    rest = key[len("decoder.layers.") :]
    if spec in ("local", "sdpa") and key in _LOCAL_NORM_NAMES:
        rest = _LOCAL_NORM_NAMES[key]
    return f"decoder.layers.{layer}.{rest}"


def iter_tensor_maps(m: ModelConfig) -> Iterator[tuple[TensorMap, int | None]]:
    """``(entry, layer)`` for every tensor of the model, in Hugging Face order.

    A tied model (``share_embeddings_and_output_weights``) has no output layer of its own: no
    ``output_layer.weight`` in the checkpoint, no ``lm_head.weight`` in the HF folder. The qkv
    bias and the q/k norms exist only under their flags (``add_qkv_bias``, ``qk_layernorm``).
    """
    keymap = [
        e
        for e in LLAMA_KEYMAP
        if (e.needs is None or getattr(m, e.needs))
        and (e.mcore != TIED_KEY or not m.share_embeddings_and_output_weights)
    ]
    first = [e for e in keymap if e.mcore.startswith("embedding.")]
    layered = [e for e in keymap if e.per_layer]
    last = [e for e in keymap if not e.per_layer and e not in first]
    yield from ((entry, None) for entry in first)
    for layer in range(m.num_layers):
        yield from ((entry, layer) for entry in layered)
    yield from ((entry, None) for entry in last)


def merge_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, num_query_groups: int, head_dim: int
) -> torch.Tensor:
    """Hugging Face q/k/v projections → Megatron's GQA-interleaved ``linear_qkv`` weight or bias.

    Args:
        q: ``[H·d, h]`` (a bias: ``[H·d]``).
        k: ``[G·d, h]`` (``[G·d]``).
        v: ``[G·d, h]`` (``[G·d]``).
        num_query_groups: G.
        head_dim: d.

    Returns:
        ``[(H + 2G)·d, h]`` (``[(H + 2G)·d]``): for each group g, its H/G query heads, then k_g,
        then v_g; a bias row goes where its weight row goes.
    """
    groups, trailing = num_query_groups, q.shape[1:]
    parts = (
        q.reshape(groups, -1, *trailing),
        k.reshape(groups, head_dim, *trailing),
        v.reshape(groups, head_dim, *trailing),
    )
    return torch.cat(parts, dim=1).reshape(-1, *trailing)


def split_qkv(
    qkv: torch.Tensor, *, num_attention_heads: int, num_query_groups: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`merge_qkv`: ``[(H + 2G)·d, h]`` → q ``[H·d, h]``, k, v ``[G·d, h]``
    (a bias: ``[(H + 2G)·d]`` → ``[H·d]``, ``[G·d]``, ``[G·d]``)."""
    groups, trailing = num_query_groups, qkv.shape[1:]
    q_rows = num_attention_heads // groups * head_dim
    grouped = qkv.reshape(groups, q_rows + 2 * head_dim, *trailing)
    q, k, v = grouped.split([q_rows, head_dim, head_dim], dim=1)
    return q.reshape(-1, *trailing), k.reshape(-1, *trailing), v.reshape(-1, *trailing)


def merge_fc1(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up ``[f, h]`` → Megatron's ``linear_fc1`` weight ``[2f, h]`` = ``[gate; up]``."""
    return torch.cat([gate, up], dim=0)


def split_fc1(fc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`merge_fc1`: ``[2f, h]`` → gate, up ``[f, h]``."""
    gate, up = fc1.chunk(2, dim=0)
    return gate.contiguous(), up.contiguous()


def pad_vocab(weight: torch.Tensor, padded_rows: int) -> torch.Tensor:
    """``[V, h]`` → ``[padded_rows, h]`` with zero rows appended (Megatron's vocab padding)."""
    if padded_rows < weight.shape[0]:
        raise ConversionError(
            f"cannot pad a vocabulary of {weight.shape[0]} rows to {padded_rows} rows"
        )
    pad = weight.new_zeros(padded_rows - weight.shape[0], *weight.shape[1:])
    return torch.cat([weight, pad], dim=0)


def strip_vocab(weight: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[padded, h]`` → ``[V, h]``: the tokenizer's rows only."""
    return weight[:vocab_size].contiguous()


def to_mcore(
    entry: TensorMap, tensors: Sequence[torch.Tensor], m: ModelConfig, *, padded_vocab: int
) -> torch.Tensor:
    """Hugging Face tensors of ``entry`` (one layer) → the global Megatron tensor of that layer."""
    if entry.kind == "qkv":
        q, k, v = tensors
        return merge_qkv(q, k, v, num_query_groups=m.num_query_groups, head_dim=m.head_dim)
    if entry.kind == "fc1":
        return merge_fc1(*tensors)
    if entry.kind == "vocab":
        return pad_vocab(tensors[0], padded_vocab)
    return tensors[0]


def to_hf(
    entry: TensorMap, tensor: torch.Tensor, m: ModelConfig, *, layer: int | None = None
) -> dict[str, torch.Tensor]:
    """One layer's global Megatron tensor of ``entry`` → its Hugging Face tensors by name."""
    names = entry.hf_names(layer)
    if entry.kind == "qkv":
        parts = split_qkv(
            tensor,
            num_attention_heads=m.num_attention_heads,
            num_query_groups=m.num_query_groups,
            head_dim=m.head_dim,
        )
    elif entry.kind == "fc1":
        parts = split_fc1(tensor)
    elif entry.kind == "vocab":
        parts = (strip_vocab(tensor, m.vocab_size),)
    else:
        parts = (tensor.contiguous(),)
    return dict(zip(names, parts, strict=True))
