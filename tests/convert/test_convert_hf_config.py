"""HF config.json ↔ ModelConfig: Llama-3.1 RoPE scaling, Mistral-v0.3, both transformers spellings,
and refusals that name the field, the expected and the found value."""

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
from megatron_scir.testing.hf import tiny_hf_llama, tiny_hf_mistral

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
