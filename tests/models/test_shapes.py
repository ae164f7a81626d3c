"""The torch-free shape tables and dtype map against real models: Megatron-Core's sharded state
dict (global shapes at TP=2, with and without Qwen's qkv bias and QK-norm) and the state dicts of
transformers Llama, Qwen2 and Qwen3 models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from megatron_scir.config import ConfigError, load_config
from megatron_scir.config.choices import DTYPE_ALIASES, Dtype
from megatron_scir.models import padded_vocab_size as config_padded_vocab_size
from megatron_scir.models.shapes import (
    DTYPE_BYTES,
    DTYPE_NAMES,
    dtype_name,
    hf_tensor_shapes,
    mcore_tensor_shapes,
    padded_vocab_size,
    torch_dtype,
)
from megatron_scir.testing.distributed import run_distributed
from megatron_scir.testing.hf import tiny_hf_llama, tiny_hf_qwen2, tiny_hf_qwen3

# GQA, a head dim (32) other than hidden/heads (24), a vocabulary (300) no multiple of 64 × TP
OVERRIDES = ["model.kv_channels=32", "model.vocab_size=300"]


def test_importing_shapes_imports_neither_torch_nor_megatron():
    code = (
        "import sys\n"
        "import megatron_scir.models.shapes\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("vocab", "divisible_by", "tp", "padded"),
    [(300, 64, 1, 320), (300, 64, 2, 384), (256, 64, 2, 256), (128256, 128, 8, 129024)],
)
def test_vocabulary_is_padded_to_a_multiple_of_divisible_by_times_tp(
    vocab, divisible_by, tp, padded
):
    assert padded_vocab_size(vocab, divisible_by, tp) == padded


def test_config_padding_is_the_shape_tables_and_nonpositive_sizes_are_refused():
    cfg = load_config("tiny", [*OVERRIDES, "parallel.tensor_model_parallel_size=2"])
    assert config_padded_vocab_size(cfg) == 384
    with pytest.raises(ConfigError, match="positive sizes"):
        padded_vocab_size(300, 0, 1)


def _global_shapes(rank, world_size, overrides):
    """Global shape of every sharded tensor of this rank's model, by checkpoint key."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    from megatron_scir.models import build_gpt_model
    from megatron_scir.parallel.state import initialize_model_parallel

    cfg = load_config("tiny", overrides)
    initialize_model_parallel(cfg.parallel)
    sharded = build_gpt_model(cfg).sharded_state_dict()
    apply_factories(sharded)
    shapes: dict[str, set[tuple[int, ...]]] = {}
    for entry in nested_values(sharded):
        if isinstance(entry, ShardedTensor):
            shapes.setdefault(entry.key, set()).add(tuple(entry.global_shape))
    return shapes


@pytest.mark.dist
@pytest.mark.parametrize(
    "layout",
    [
        ["parallel.tensor_model_parallel_size=2"],
        # the last stage's output layer is a copy of the embeddings, saved under their key
        [
            "parallel.pipeline_model_parallel_size=2",
            "model.share_embeddings_and_output_weights=true",
        ],
        # the qkv bias is split by rows like the weight; the q/k norms are whole on each rank
        [
            "parallel.tensor_model_parallel_size=2",
            "model.add_qkv_bias=true",
            "model.qk_layernorm=true",
        ],
    ],
    ids=["tp2", "tied_pp2", "qkv_bias_qk_norm_tp2"],
)
def test_mcore_table_is_the_global_shapes_of_a_models_sharded_state_dict(layout):
    cfg = load_config("tiny", [*OVERRIDES, *layout])
    expected = mcore_tensor_shapes(cfg.model, padded_vocab=config_padded_vocab_size(cfg))
    assert ("output_layer.weight" in expected) != cfg.model.share_embeddings_and_output_weights
    merged: dict[str, set[tuple[int, ...]]] = {}
    for shapes in run_distributed(_global_shapes, 2, args=([*OVERRIDES, *layout],)):
        for key, found in shapes.items():
            merged.setdefault(key, set()).update(found)
    assert merged == {key: {shape} for key, shape in expected.items()}


HF_MODELS = {
    "llama": lambda out: tiny_hf_llama(out, vocab_size=300, head_dim=32, num_layers=3),
    "tied_llama": lambda out: tiny_hf_llama(
        out, vocab_size=300, head_dim=32, num_layers=3, tie_word_embeddings=True
    ),
    "qwen2": lambda out: tiny_hf_qwen2(out, vocab_size=300, num_layers=3),  # tied
    "qwen3": lambda out: tiny_hf_qwen3(out, vocab_size=300, head_dim=32, num_layers=3),
}


@pytest.mark.parametrize("family", list(HF_MODELS))
def test_hf_table_is_the_state_dict_of_a_transformers_model(tmp_path, family):
    from megatron_scir.convert import config_from_hf

    model = HF_MODELS[family](tmp_path)
    state = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    m = config_from_hf(tmp_path).model
    assert m.share_embeddings_and_output_weights == model.config.tie_word_embeddings
    if m.share_embeddings_and_output_weights:  # transformers lists the shared weight twice
        assert state.pop("lm_head.weight") == state["model.embed_tokens.weight"]
    assert hf_tensor_shapes(m) == state


def test_every_dtype_name_and_alias_resolves_to_its_torch_dtype_and_size():
    assert set(DTYPE_NAMES) == {d.value for d in Dtype} | set(DTYPE_ALIASES)
    for name in DTYPE_NAMES:
        dtype = torch_dtype(name)
        assert dtype == getattr(torch, dtype_name(name).value)
        assert torch.empty((), dtype=dtype).element_size() == DTYPE_BYTES[dtype_name(name)]
    assert (torch_dtype("bf16"), torch_dtype(Dtype.FLOAT16)) == (torch.bfloat16, torch.float16)
    with pytest.raises(ConfigError, match="unknown dtype 'int8'"):
        torch_dtype("int8")
