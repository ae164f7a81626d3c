"""HF config.json ↔ ModelConfig: Llama-3.1 RoPE scaling, Mistral-v0.3, Qwen2 (qkv bias) and Qwen3
(QK-norm), both transformers spellings, and refusals that name the field, the expected and the
found value."""

from __future__ import annotations

import dataclasses
import json

import pytest

from megatron_scir.convert.errors import ConversionError
from megatron_scir.convert.hf_config import (
    config_from_hf,
    hf_config_dict,
    model_fields_from_hf,
    read_hf_config,
)
from megatron_scir.testing.hf import tiny_hf_llama, tiny_hf_mistral, tiny_hf_qwen2, tiny_hf_qwen3

LLAMA31_ROPE = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@pytest.fixture(scope="module")
def llama31_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "llama31"
    tiny_hf_llama(out, head_dim=32, rope_theta=500000.0, llama3_rope_scaling=LLAMA31_ROPE)
    return out


def test_llama31_config_gives_gqa_head_dim_and_llama3_rope_scaling(llama31_dir):
    m = config_from_hf(llama31_dir).model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size) == (2, 64, 160)
    assert (m.num_attention_heads, m.num_query_groups, m.head_dim) == (4, 2, 32)
    assert (m.vocab_size, m.max_position_embeddings, m.layernorm_epsilon) == (256, 2048, 1e-5)
    assert m.rotary_base == 500000.0 and m.rope_scaling
    assert (m.rope_scaling_factor, m.rope_low_freq_factor, m.rope_high_freq_factor) == (8, 1, 4)
    assert m.rope_original_max_position_embeddings == 8192
    assert m.params_dtype == "float32"


def test_transformers4_spelling_gives_the_same_fields(llama31_dir):
    new = read_hf_config(llama31_dir)
    old = {k: v for k, v in new.items() if k not in ("rope_parameters", "dtype")}
    old.update(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", **LLAMA31_ROPE})
    old["torch_dtype"] = "float32"
    assert model_fields_from_hf(old) == model_fields_from_hf(new)


def test_mistral_v03_config_without_sliding_window_is_read(tmp_path):
    tiny_hf_mistral(tmp_path, num_kv_heads=1)
    single = ["parallel.tensor_model_parallel_size=1", "parallel.sequence_parallel=false"]
    m = config_from_hf(tmp_path, "mistral_7b", single).model
    assert (m.num_query_groups, m.rotary_base, m.rope_scaling) == (1, 1_000_000.0, False)
    assert m.params_dtype == "float32"  # the folder's dtype wins over the preset's bfloat16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architectures": ["GPT2LMHeadModel"]}, r"architectures: expected one of .*GPT2"),
        ({"hidden_act": "gelu"}, r"hidden_act: expected 'silu', found 'gelu'"),
        ({"attention_bias": True}, r"attention_bias: expected False, found True"),
        ({"sliding_window": 1024}, r"sliding_window: expected null .* found 1024"),
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
            r"rope_type: expected 'default' or 'llama3', found 'yarn'",
        ),
        ({"num_hidden_layers": None}, r"missing field 'num_hidden_layers'"),
    ],
    ids=["architecture", "activation", "bias", "sliding_window", "yarn_rope", "missing"],
)
def test_unsupported_config_is_refused_naming_the_field(llama31_dir, change, message):
    hf = {**read_hf_config(llama31_dir), **change}
    with pytest.raises(ConversionError, match=message):
        model_fields_from_hf(hf)


def test_shape_overrides_are_refused_but_the_training_dtype_is_taken(llama31_dir):
    with pytest.raises(ConversionError, match=r"model.hidden_size comes from .* \(64\)"):
        config_from_hf(llama31_dir, "tiny", ["model.hidden_size=128"])
    cfg = config_from_hf(llama31_dir, "tiny", ["model.params_dtype=bfloat16", "scir.beta=0.2"])
    assert cfg.model.params_dtype == "bfloat16" and cfg.scir.beta == 0.2


def test_the_layout_is_checked_against_the_hf_model_not_the_presets(tmp_path):
    """SmolLM2-like: 6 heads fit TP=3, the tiny preset's 4 heads do not; TP=3 must be accepted
    (and TP=4, which the HF model does not fit, refused naming its heads)."""
    from megatron_scir.config import ConfigError

    hf_dir = tmp_path / "six_heads"
    tiny_hf_llama(hf_dir, hidden_size=96, intermediate_size=192, num_heads=6, num_kv_heads=3)
    cfg = config_from_hf(hf_dir, "tiny", ["parallel.tensor_model_parallel_size=3"])
    assert cfg.model.num_attention_heads == 6
    with pytest.raises(ConfigError, match=r"model.num_attention_heads \(6\)"):
        config_from_hf(hf_dir, "tiny", ["parallel.tensor_model_parallel_size=4"])


def test_generated_config_json_loads_in_transformers_with_the_same_fields(llama31_dir, tmp_path):
    from transformers import AutoConfig

    m = config_from_hf(llama31_dir).model
    hf = hf_config_dict(m, dtype="bfloat16")
    (tmp_path / "config.json").write_text(json.dumps(hf))
    loaded = AutoConfig.from_pretrained(tmp_path).to_dict()
    assert str(loaded["dtype"]).endswith("bfloat16")
    loaded["architectures"] = hf["architectures"]
    expected = {**model_fields_from_hf(hf), "params_dtype": "bfloat16"}
    assert model_fields_from_hf({**loaded, "dtype": "bfloat16"}) == expected
    assert expected["kv_channels"] == 32 and expected["rope_scaling"]


def test_stored_config_json_is_kept_with_the_export_dtype_and_must_match_the_model(llama31_dir):
    template = read_hf_config(llama31_dir)
    m = config_from_hf(llama31_dir).model
    out = hf_config_dict(m, dtype="bfloat16", template=template)
    assert out == {**template, "dtype": "bfloat16"}
    other = config_from_hf(llama31_dir, overrides=["model.params_dtype=float16"]).model
    other = type(other)(**{**other.__dict__, "num_layers": 3})
    with pytest.raises(ConversionError, match="model.num_layers expected 3, found 2"):
        hf_config_dict(other, dtype="float32", template=template)


def test_tie_word_embeddings_ties_the_model_and_is_written_back(llama31_dir, tmp_path):
    tiny_hf_llama(tmp_path, tie_word_embeddings=True)
    template = read_hf_config(tmp_path)
    m = config_from_hf(tmp_path).model
    assert m.share_embeddings_and_output_weights
    assert not config_from_hf(llama31_dir).model.share_embeddings_and_output_weights
    assert hf_config_dict(m, dtype="float32")["tie_word_embeddings"] is True
    assert hf_config_dict(m, dtype="float32", template=template) == template
    with pytest.raises(ConversionError, match="share_embeddings_and_output_weights comes from"):
        config_from_hf(tmp_path, overrides=["model.share_embeddings_and_output_weights=false"])
    # imported before the weights could stay tied, the checkpoint holds its own output layer
    untied = dataclasses.replace(m, share_embeddings_and_output_weights=False)
    assert (
        hf_config_dict(untied, dtype="float32", template=template)["tie_word_embeddings"] is False
    )


@pytest.fixture(scope="module")
def qwen_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tiny_hf_qwen2(root / "qwen2")
    tiny_hf_qwen3(root / "qwen3", head_dim=32)
    return {"qwen2": root / "qwen2", "qwen3": root / "qwen3"}


def test_qwen2_has_qkv_bias_and_tied_embeddings_and_qwen3_qk_norm_and_its_head_dim(qwen_dirs):
    qwen2, qwen3 = (config_from_hf(qwen_dirs[name]).model for name in ("qwen2", "qwen3"))
    assert (qwen2.add_qkv_bias, qwen2.qk_layernorm, qwen2.head_dim) == (True, False, 16)
    assert qwen2.share_embeddings_and_output_weights and qwen2.rotary_base == 1e6
    assert (qwen3.add_qkv_bias, qwen3.qk_layernorm, qwen3.head_dim) == (False, True, 32)
    assert not qwen3.share_embeddings_and_output_weights and qwen3.layernorm_epsilon == 1e-6
    with pytest.raises(ConversionError, match=r"model.qk_layernorm comes from .* \(True\)"):
        config_from_hf(qwen_dirs["qwen3"], overrides=["model.qk_layernorm=false"])


def test_a_qwen_sliding_window_is_ignored_while_use_sliding_window_is_off(qwen_dirs):
    hf = read_hf_config(qwen_dirs["qwen2"])
    hub = {**hf, "sliding_window": 1024, "max_window_layers": 21}  # as Qwen2.5 configs ship
    assert model_fields_from_hf(hub) == model_fields_from_hf(hf)


@pytest.mark.parametrize(
    ("model", "change", "message"),
    [
        ("qwen2", {"use_sliding_window": True}, r"use_sliding_window: expected False, found True"),
        (
            "qwen2",
            {"layer_types": ["full_attention", "sliding_attention"]},
            r"layer_types: expected only 'full_attention', found \['sliding_attention'\]",
        ),
        ("qwen3", {"attention_bias": True}, r"attention_bias: expected False, found True"),
        (
            "qwen2",
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}},
            r"rope_type: expected 'default' or 'llama3', found 'yarn'",
        ),
        (
            "qwen3",
            {"architectures": ["Qwen3MoeForCausalLM"], "num_experts": 8},
            r"architectures: expected one of .*Qwen3ForCausalLM, found \['Qwen3MoeForCausalLM'\]",
        ),
        (
            "qwen2",
            {"architectures": ["Gemma2ForCausalLM"]},
            r"architectures: expected one of .* found \['Gemma2ForCausalLM'\]",
        ),
    ],
    ids=["sliding_window", "layer_types", "qwen3_attention_bias", "yarn_rope", "moe", "gemma"],
)
def test_unsupported_qwen_config_is_refused_naming_the_field(qwen_dirs, model, change, message):
    hf = {**read_hf_config(qwen_dirs[model]), **change}
    with pytest.raises(ConversionError, match=message):
        model_fields_from_hf(hf)


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_a_qwen_model_without_a_stored_config_exports_a_config_transformers_reads_back(
    qwen_dirs, name, tmp_path
):
    from transformers import AutoConfig

    m = config_from_hf(qwen_dirs[name]).model
    hf = hf_config_dict(m, dtype="float32")
    assert hf["architectures"] == [f"{name.capitalize()}ForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.model_type == name and loaded.use_sliding_window is False
    fields = {**loaded.to_dict(), "architectures": hf["architectures"], "dtype": "float32"}
    assert model_fields_from_hf(fields) == model_fields_from_hf(hf)
    assert model_fields_from_hf(hf) == model_fields_from_hf(read_hf_config(qwen_dirs[name]))


def test_qkv_bias_with_qk_norm_has_no_architecture_to_export_to(qwen_dirs):
    m = config_from_hf(qwen_dirs["qwen3"]).model
    both = dataclasses.replace(m, add_qkv_bias=True)
    with pytest.raises(ConversionError, match="model.add_qkv_bias=true with model.qk_layernorm"):
        hf_config_dict(both, dtype="float32")
