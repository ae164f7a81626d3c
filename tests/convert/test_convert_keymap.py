"""The declarative key map and its qkv / fc1 / vocabulary helpers (pure tensors, no Megatron).

The shape tables the map is checked against are tested in tests/models/test_shapes.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_scir.convert.errors import ConversionError
from megatron_scir.convert.hf_config import config_from_hf
from megatron_scir.convert.keymap import (
    BY_MCORE_KEY,
    LLAMA_KEYMAP,
    iter_tensor_maps,
    merge_fc1,
    merge_qkv,
    pad_vocab,
    parameter_name,
    split_fc1,
    split_qkv,
    strip_vocab,
    to_hf,
    to_mcore,
)
from megatron_scir.models.shapes import hf_tensor_shapes, mcore_tensor_shapes
from megatron_scir.testing.hf import tiny_hf_llama, tiny_hf_qwen2, tiny_hf_qwen3


def _labelled(rows: int, start: int, hidden: int = 3) -> torch.Tensor:
    """A ``[rows, hidden]`` weight whose row r holds ``start + r`` (to read layouts back)."""
    return (torch.arange(rows, dtype=torch.float32) + start)[:, None].repeat(1, hidden)


def test_merge_qkv_stacks_each_groups_query_heads_then_its_key_then_its_value():
    heads, groups, d = 4, 2, 2
    q, k, v = _labelled(heads * d, 0), _labelled(groups * d, 100), _labelled(groups * d, 200)
    qkv = merge_qkv(q, k, v, num_query_groups=groups, head_dim=d)
    group0 = [0, 1, 2, 3, 100, 101, 200, 201]  # query heads 0 and 1, key 0, value 0
    group1 = [4, 5, 6, 7, 102, 103, 202, 203]
    assert qkv[:, 0].tolist() == group0 + group1


@pytest.mark.parametrize("groups", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_split_qkv_inverts_merge_qkv(groups):
    heads, d, hidden = 4, 8, 16
    g = torch.Generator().manual_seed(0)
    q = torch.randn(heads * d, hidden, generator=g)
    k, v = (torch.randn(groups * d, hidden, generator=g) for _ in range(2))
    qkv = merge_qkv(q, k, v, num_query_groups=groups, head_dim=d)
    assert qkv.shape == ((heads + 2 * groups) * d, hidden)
    back = split_qkv(qkv, num_attention_heads=heads, num_query_groups=groups, head_dim=d)
    for got, want in zip(back, (q, k, v), strict=True):
        assert torch.equal(got, want)


def test_qkv_bias_rows_follow_their_weight_rows_through_merge_and_split():
    heads, groups, d, hidden = 4, 2, 8, 16
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(rows * d, hidden, generator=g) for rows in (heads, groups, groups)]
    biases = [torch.randn(rows * d, generator=g) for rows in (heads, groups, groups)]
    # a bias is one more column of its weight: merged, it must sit in that column's rows
    augmented = [torch.cat([w, b[:, None]], dim=1) for w, b in zip(weights, biases, strict=True)]
    merged = merge_qkv(*augmented, num_query_groups=groups, head_dim=d)
    bias = merge_qkv(*biases, num_query_groups=groups, head_dim=d)
    assert torch.equal(bias, merged[:, -1])
    back = split_qkv(bias, num_attention_heads=heads, num_query_groups=groups, head_dim=d)
    assert all(torch.equal(a, b) for a, b in zip(back, biases, strict=True))


def test_fc1_is_gate_then_up_and_splits_back():
    gate, up = _labelled(4, 0), _labelled(4, 10)
    fc1 = merge_fc1(gate, up)
    assert fc1[:, 0].tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    assert all(torch.equal(a, b) for a, b in zip(split_fc1(fc1), (gate, up), strict=True))


def test_vocabulary_padding_appends_zero_rows_and_strip_keeps_the_tokenizers_rows():
    weight = _labelled(5, 1)
    padded = pad_vocab(weight, 8)
    assert padded.shape == (8, 3) and not padded[5:].any()
    assert torch.equal(strip_vocab(padded, 5), weight)
    with pytest.raises(ConversionError, match="5 rows to 4 rows"):
        pad_vocab(weight, 4)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "llama"
    model = tiny_hf_llama(out, vocab_size=300, head_dim=32, num_layers=3)
    return model, config_from_hf(out).model


BUILDERS = {
    "llama": lambda out: tiny_hf_llama(out, vocab_size=300, head_dim=32, num_layers=3),
    "qwen2": lambda out: tiny_hf_qwen2(out, vocab_size=300, num_layers=3),  # tied, qkv bias
    "qwen3": lambda out: tiny_hf_qwen3(out, vocab_size=300, head_dim=32, num_layers=3),
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def real_model(request, tmp_path_factory):
    """A transformers model of each supported family and its ModelConfig."""
    out = tmp_path_factory.mktemp("hf") / request.param
    model = BUILDERS[request.param](out)
    return model, config_from_hf(out).model


def test_keymap_names_every_tensor_of_a_real_model_once_in_the_shape_tables_order(real_model):
    model, m = real_model
    names = [name for entry, layer in iter_tensor_maps(m) for name in entry.hf_names(layer)]
    state = set(model.state_dict())
    if m.share_embeddings_and_output_weights:  # transformers lists the shared weight twice
        state.remove("lm_head.weight")
    assert sorted(names) == sorted(state) and len(set(names)) == len(names)
    assert names == list(hf_tensor_shapes(m))
    mcore = {entry.mcore for entry, _ in iter_tensor_maps(m)}
    assert mcore == set(mcore_tensor_shapes(m, padded_vocab=384))


def test_a_tied_model_maps_the_embeddings_alone_in_both_tables(llama):
    _, m = llama
    tied = dataclasses.replace(m, share_embeddings_and_output_weights=True)
    pairs = list(iter_tensor_maps(tied))
    assert {entry.mcore for entry, _ in pairs} == set(mcore_tensor_shapes(tied, padded_vocab=384))
    names = [name for entry, layer in pairs for name in entry.hf_names(layer)]
    assert names == list(hf_tensor_shapes(tied)) and "lm_head.weight" not in names


def test_hf_to_mcore_and_back_reproduces_every_tensor_bit_for_bit(real_model):
    model, m = real_model
    state = model.state_dict()
    shapes = mcore_tensor_shapes(m, padded_vocab=384)
    for entry, layer in iter_tensor_maps(m):
        names = entry.hf_names(layer)
        full = to_mcore(entry, [state[n] for n in names], m, padded_vocab=384)
        want_shape = shapes[entry.mcore][1:] if entry.per_layer else shapes[entry.mcore]
        assert tuple(full.shape) == want_shape, entry.mcore
        back = to_hf(entry, full, m, layer=layer)
        assert back.keys() == set(names)
        assert all(torch.equal(back[n], state[n]) for n in names), entry.mcore


def test_local_spec_names_its_norm_modules_and_te_names_them_after_the_fused_keys():
    qkv_norm = "decoder.layers.self_attention.linear_qkv.layer_norm_weight"
    fc1_norm = "decoder.layers.mlp.linear_fc1.layer_norm_weight"
    assert parameter_name(qkv_norm, "local", 3) == "decoder.layers.3.input_layernorm.weight"
    assert parameter_name(fc1_norm, "sdpa", 0) == "decoder.layers.0.pre_mlp_layernorm.weight"
    assert parameter_name(qkv_norm, "te", 3) == "decoder.layers.3." + qkv_norm.split("layers.")[1]
    qkv = "decoder.layers.self_attention.linear_qkv.weight"
    assert parameter_name(qkv, "local", 1) == parameter_name(qkv, "te", 1)
    assert parameter_name("output_layer.weight", "te") == "output_layer.weight"
    assert set(BY_MCORE_KEY) == {e.mcore for e in LLAMA_KEYMAP} and len(LLAMA_KEYMAP) == 12
    for key in ("linear_qkv.bias", "q_layernorm.weight", "k_layernorm.weight"):
        name = "decoder.layers.self_attention." + key  # the same in both specs
        assert parameter_name(name, "local", 2) == parameter_name(name, "te", 2)
