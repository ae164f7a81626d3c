"""Layer specs: sdpa equals local, cached decoding is bottom-right causal, TE is refused."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_scir.config import ConfigError, load_config
from megatron_scir.testing.distributed import run_distributed


def _logits(rank, world_size, impl, seed):
    from megatron_scir.config import load_config
    from megatron_scir.models import build_gpt_model
    from megatron_scir.parallel.state import initialize_model_parallel

    cfg = load_config("tiny", [f"model.transformer_impl={impl}"])
    initialize_model_parallel(cfg.parallel)
    torch.manual_seed(seed)
    model = build_gpt_model(cfg)
    tokens = torch.randint(
        0, cfg.model.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        return model(tokens, torch.arange(24).expand(2, 24), None)


def test_sdpa_spec_gives_the_local_spec_logits_for_full_sequences():
    (local,) = run_distributed(_logits, 1, args=("local", 11))
    (sdpa,) = run_distributed(_logits, 1, args=("sdpa", 11))
    assert local.shape == (2, 24, 256)
    torch.testing.assert_close(sdpa, local, atol=1e-5, rtol=0)


def _reference_attention(q, k, v, scale):
    """Explicit softmax attention with queries at the END of the key sequence (cached decoding)."""
    sq, b, heads, hn = q.shape
    sk, groups = k.shape[0], k.shape[2]
    k = k.repeat_interleave(heads // groups, dim=2)
    v = v.repeat_interleave(heads // groups, dim=2)
    scores = torch.einsum("qbhd,kbhd->bhqk", q, k) * scale
    q_pos = torch.arange(sk - sq, sk)[:, None]
    scores = scores.masked_fill(torch.arange(sk)[None, :] > q_pos, float("-inf"))
    out = torch.einsum("bhqk,kbhd->qbhd", scores.softmax(-1), v)
    return out.reshape(sq, b, heads * hn)


def _cached_decoding(rank, world_size):
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_scir.models import transformer_config
    from megatron_scir.models.attention import SDPAttention
    from megatron_scir.parallel.state import initialize_model_parallel

    cfg = load_config("tiny")
    initialize_model_parallel(cfg.parallel)
    attn = SDPAttention(transformer_config(cfg), 1, AttnMaskType.causal, "self").eval()
    g = torch.Generator().manual_seed(0)
    heads, groups, hn = 4, 2, 24
    results = []
    for sq, sk in [(1, 9), (3, 9), (9, 9)]:
        q = torch.randn(sq, 2, heads, hn, generator=g)
        k, v = torch.randn(2, sk, 2, groups, hn, generator=g)
        results.append((attn(q, k, v, None), _reference_attention(q, k, v, 1 / math.sqrt(hn))))
    return results


def test_sdpa_attention_is_bottom_right_causal_when_queries_are_shorter_than_keys():
    (results,) = run_distributed(_cached_decoding, 1)
    for got, want in results:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_transformer_engine_spec_is_refused_with_a_clear_message_when_te_is_missing():
    from megatron_scir.models import layer_spec, te_available

    cfg = load_config("tiny", ["model.transformer_impl=te", "model.fp8=hybrid"])
    if te_available():  # a GPU node with TE: the TE spec is what gets built
        assert "TE" in repr(layer_spec(cfg).submodules.self_attention.submodules.linear_qkv)
        return
    with pytest.raises(ConfigError, match="needs Transformer Engine, which is not installed"):
        layer_spec(cfg)


def test_fp8_70b_preset_passes_fp8_recipe_recompute_and_layout_to_transformer_config():
    from megatron_scir.models import transformer_config

    tc = transformer_config(load_config("llama3_70b_fp8"))
    assert (tc.fp8, tc.fp8_recipe) == ("hybrid", "tensorwise")
    assert (tc.recompute_granularity, tc.recompute_method, tc.recompute_num_layers) == (
        "full",
        "uniform",
        1,
    )
    assert tc.tensor_model_parallel_size == 8 and tc.pipeline_model_parallel_size == 4
    assert tc.sequence_parallel and tc.bf16 and tc.params_dtype == torch.bfloat16
    assert (tc.num_query_groups, tc.kv_channels, tc.normalization) == (8, 128, "RMSNorm")
    assert tc.gated_linear_unit and not tc.add_bias_linear


def _rope_freqs(rank, world_size):
    from megatron_scir.models import build_gpt_model
    from megatron_scir.parallel.state import initialize_model_parallel

    cfg = load_config(
        "tiny",
        [
            "model.rope_scaling=true",
            "model.rope_scaling_factor=4.0",
            "model.rope_high_freq_factor=2.0",
            "model.rope_original_max_position_embeddings=64",
        ],
    )
    initialize_model_parallel(cfg.parallel)
    return build_gpt_model(cfg).rotary_pos_emb.inv_freq.clone()


def test_llama3_rope_scaling_uses_the_configured_factors():
    (inv_freq,) = run_distributed(_rope_freqs, 1)
    dim, base = 24, 10000.0
    freqs = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    wavelen = 2 * math.pi / freqs
    low_wavelen, high_wavelen = 64 / 1.0, 64 / 2.0  # original context / low, high factors
    smooth = (64 / wavelen - 1.0) / (2.0 - 1.0)
    scaled = (1 - smooth) * freqs / 4.0 + smooth * freqs
    want = torch.where(
        wavelen > low_wavelen, freqs / 4.0, torch.where(wavelen < high_wavelen, freqs, scaled)
    )
    torch.testing.assert_close(inv_freq, want)
    assert not torch.allclose(inv_freq, freqs)


@pytest.mark.parametrize("impl", ["local", "sdpa", "te"])
def test_qk_layernorm_puts_a_norm_over_the_head_dim_on_queries_and_keys(impl):
    from megatron.core.transformer.identity_op import IdentityOp

    from megatron_scir.models import layer_spec, te_available, transformer_config
    from megatron_scir.models.norm import RMSNorm

    if impl == "te" and not te_available():
        pytest.skip("Transformer Engine is not installed here")
    qwen = ["model.add_qkv_bias=true", "model.qk_layernorm=true"]
    config = transformer_config(load_config("tiny", [f"model.transformer_impl={impl}", *qwen]))
    assert config.add_qkv_bias and config.qk_layernorm and not config.add_bias_linear
    for overrides, norm in (([], IdentityOp), (qwen, RMSNorm)):
        cfg = load_config("tiny", [f"model.transformer_impl={impl}", *overrides])
        attention = layer_spec(cfg).submodules.self_attention.submodules
        if impl == "te":  # Transformer Engine's own norm (RMSNorm from the config)
            assert (attention.q_layernorm is IdentityOp) == (norm is IdentityOp)
        else:
            assert attention.q_layernorm is norm and attention.k_layernorm is norm


def _decoded_logits(rank, world_size, impl):
    """Last-token logits of a prefill of 10 tokens and 6 one-token steps through Megatron's
    static inference context, and the full forward's logits at the same positions."""
    from megatron.core.inference.contexts import StaticInferenceContext
    from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import (
        GPTInferenceWrapper,
    )

    from megatron_scir.models import build_gpt_model
    from megatron_scir.models.attention import KeysAfterRopeSelfAttention
    from megatron_scir.parallel.state import initialize_model_parallel

    cfg = load_config("tiny", [f"model.transformer_impl={impl}"])
    initialize_model_parallel(cfg.parallel)
    torch.manual_seed(5)
    model = build_gpt_model(cfg).eval()
    assert any(isinstance(m, KeysAfterRopeSelfAttention) for m in model.modules())
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    positions = torch.arange(16).expand(2, 16)
    wrapper = GPTInferenceWrapper(model, StaticInferenceContext(2, 16))
    wrapper.prep_model_for_inference()
    steps = []
    with torch.no_grad():
        full = model(tokens, positions, None)[:, 9:]
        window = {"tokens": tokens[:, :10], "position_ids": positions[:, :10],
                  "attention_mask": None}
        steps.append(wrapper.run_one_forward_step(window)[:, -1])
        for i in range(10, 16):
            window = {"tokens": tokens[:, i : i + 1], "position_ids": positions[:, i : i + 1],
                      "attention_mask": None}
            steps.append(wrapper.run_one_forward_step(window)[:, -1])
        cached = wrapper.inference_context.key_value_memory_dict[1][0][:16].clone()
    return full, torch.stack(steps, 1), cached


@pytest.mark.parametrize("impl", ["local", "sdpa"])
def test_cached_decoding_with_keys_after_rope_gives_the_full_forward_logits(impl):
    full, decoded, cached = run_distributed(_decoded_logits, 1, args=(impl,))[0]
    torch.testing.assert_close(decoded, full, atol=2e-5, rtol=0)
    assert cached.abs().sum() > 0  # the static cache was used, rotated keys and all


def _shifted_keys(rank, world_size):
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    from megatron_scir.models import transformer_config
    from megatron_scir.models.attention import shift_cached_keys
    from megatron_scir.parallel.state import initialize_model_parallel

    cfg = load_config("tiny")
    initialize_model_parallel(cfg.parallel)
    config = transformer_config(cfg)
    dim = config.kv_channels
    freqs = RotaryEmbedding(kv_channels=dim, rotary_percent=1.0)(40)  # [40, 1, 1, dim]
    keys = torch.randn(5, 3, 2, dim, generator=torch.Generator().manual_seed(0))

    def cached(first):  # row r's 5 keys at slots first[r]..first[r]+4, rotated (RoPE)
        rows = []
        for row, start in enumerate(first):
            k, angle = keys[:, row], freqs[start : start + 5, 0]  # [5, groups, dim], [5, 1, dim]
            half = torch.cat((-k[..., dim // 2 :], k[..., : dim // 2]), -1)
            rows.append(k * angle.cos() + half * angle.sin())
        return torch.stack(rows, 1)

    shifts = torch.tensor([0, 3, 11])
    return shift_cached_keys(cached([0, 0, 0]), shifts, freqs, config), cached([0, 3, 11])


def test_shifting_rotated_keys_moves_them_to_later_positions():
    moved, expected = run_distributed(_shifted_keys, 1)[0]
    torch.testing.assert_close(moved, expected, atol=1e-5, rtol=0)
