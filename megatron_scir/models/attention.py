"""Attention modules of the ``local`` and ``sdpa`` specs.

:class:`KeysAfterRopeSelfAttention`: Megatron's ``SelfAttention`` whose static-batch KV cache
holds keys after RoPE (see the class).

:class:`SDPAttention`: core attention on ``torch.nn.functional.scaled_dot_product_attention``
(the ``sdpa`` spec).

Flash/memory-efficient attention without Transformer Engine. A drop-in ``core_attention`` for
Megatron's ``SelfAttention``: queries ``[sq, b, np, hn]``, keys/values ``[sk, b, ng, hn]`` (GQA
groups), output ``[sq, b, np·hn]``. Causality is bottom-right aligned, so a query block shorter
than the keys (cached decoding: the new tokens come last) sees every cached key; a plain
``is_causal=True`` would align it top-left and hide them.

Packed sequences (Megatron's THD format, ``packed_seq_params.qkv_format == "thd"``): queries
``[t, np, hn]`` hold several sequences back to back (``cu_seqlens_q``); each attends causally to
itself only, one SDPA call per sequence, so no ``[t, t]`` mask is made and no padding is computed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class KeysAfterRopeSelfAttention(SelfAttention):
    """Megatron's ``SelfAttention`` whose static inference cache holds keys after RoPE.

    Megatron's static batching caches keys before RoPE and, at every step, rotates every cached
    key (slots ``[0, end)``) again: with SmolLM2 on CPU 9 % of a decode step. Here a new key is
    rotated once, with its slot's angle, before it is cached, and only the query is rotated in
    the step; the attention scores are the same. Training, the dynamic engine and flash
    decoding (which already caches rotated keys) take Megatron's path unchanged.

    A cached key can be moved to a later slot by rotating it further
    (:func:`shift_cached_keys`): the generation loop places a shared prefix at each row's
    padding offset that way.
    """

    def _adjust_key_value_for_inference(
        self, inference_context, query, key, value, rotary_pos_emb, *args, **kwargs
    ):
        if (
            inference_context is None
            or not inference_context.is_static_batching()
            or rotary_pos_emb is None
            or self.config.flash_decode
        ):
            return super()._adjust_key_value_for_inference(
                inference_context, query, key, value, rotary_pos_emb, *args, **kwargs
            )
        q_pos_emb, k_pos_emb = rotary_pos_emb
        start = inference_context.sequence_len_offset
        end = start + key.size(0)
        key = apply_rotary_pos_emb(
            key,
            k_pos_emb[start:end],
            config=self.config,
            mscale=self._yarn_concentration_factor,
            cp_group=self.pg_collection.cp,
        )
        query, key, value, _, attn_mask_type, block_table = (
            super()._adjust_key_value_for_inference(
                inference_context, query, key, value, None, *args, **kwargs
            )
        )
        # the keys are rotated: Megatron's forward rotates the query only
        return query, key, value, (q_pos_emb[start:end], None), attn_mask_type, block_table


def shift_cached_keys(
    keys: torch.Tensor, shifts: torch.Tensor, freqs: torch.Tensor, config: TransformerConfig
) -> torch.Tensor:
    """Rotated keys ``[s, b, groups, head dim]`` as if each row ``b`` sat ``shifts[b]`` slots
    later (RoPE's rotations add up: rotating by the angle of position ``p`` moves a key ``p``
    positions). ``freqs``: the model's ``rotary_pos_emb(length)``, ``[length, 1, 1, dim]``."""
    # rows as RoPE's sequence dimension: one angle per row, the same for each of its slots
    moved = apply_rotary_pos_emb(keys.transpose(0, 1), freqs[shifts], config=config)
    return moved.transpose(0, 1)


class SDPAttention(MegatronModule):
    """Megatron ``core_attention`` module backed by torch SDPA (per-TP-partition heads)."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ) -> None:
        super().__init__(config=config)
        tp = pg_collection.tp.size() if pg_collection is not None else _tp_world_size()
        if config.context_parallel_size > 1:
            raise ValueError("the sdpa spec does not support context parallelism; use te")
        self.attn_mask_type = attn_mask_type
        self.heads = config.num_attention_heads // tp
        self.groups = config.num_query_groups // tp
        self.dropout_p = (
            config.attention_dropout if attention_dropout is None else attention_dropout
        )
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        """[sq, b, np, hn] × [sk, b, ng, hn]² (+ Megatron mask, True = masked) → [sq, b, np·hn];
        packed (THD): [t, np, hn] × [t, ng, hn]² → [t, np·hn]."""
        if attention_bias is not None:
            raise ValueError("the sdpa spec does not support attention bias")
        if packed_seq_params is not None:
            return self._packed(query, key, value, packed_seq_params)
        sq, b, heads, hn = query.shape
        sk = key.shape[0]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, hn]
        mask, causal = None, False
        if attention_mask is not None:
            mask = ~attention_mask.bool()  # Megatron masks True = hidden; SDPA True = attend
        elif (attn_mask_type or self.attn_mask_type) == AttnMaskType.causal:
            if sq == sk:
                causal = True
            else:  # bottom-right causal: query i sits at absolute position sk - sq + i
                mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal,
            scale=self.softmax_scale,
            dropout_p=self.dropout_p if self.training else 0.0,
            enable_gqa=self.groups != heads,
        )
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * hn)

    def _packed(self, query, key, value, params) -> torch.Tensor:
        if params.qkv_format != "thd":
            raise ValueError(f"the sdpa spec packs THD sequences, not {params.qkv_format!r}")
        bounds = params.cu_seqlens_q.tolist()
        if bounds[0] != 0 or bounds[-1] != query.size(0):
            raise ValueError(
                f"cu_seqlens_q {bounds} do not cover the {query.size(0)} packed tokens"
            )
        dropout = self.dropout_p if self.training else 0.0
        lengths = [end - start for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
        # torch.split, not per-sequence slicing: its backward is one cat, where each slice's
        # backward would zero-fill and add a full [t, heads, hn] gradient (measured: 7 % of
        # a CPU step with 17 sequences)
        outputs = []
        for q, k, v in zip(*(t.split(lengths) for t in (query, key, value)), strict=True):
            if q.size(0) == 0:
                continue
            q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                is_causal=True,
                scale=self.softmax_scale,
                dropout_p=dropout,
                enable_gqa=self.groups != self.heads,
            )
            outputs.append(out[0].transpose(0, 1))
        return torch.cat(outputs).flatten(1)


def _tp_world_size() -> int:
    return parallel_state.get_tensor_model_parallel_world_size()
