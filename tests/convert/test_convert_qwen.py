"""Qwen2/Qwen2.5 (q/k/v biases, tied embeddings) and Qwen3 (QK-norm, its own head dim) convert as
Llama does: HF → Megatron-Core gives the transformers logits at TP=1, TP=2 and PP=2; HF → Megatron
(TP=2) → HF is bit-exact and loads in transformers, with the stored config.json and without it.

One gloo run of two processes serves every test here (a module fixture): for each model it
converts at the TP=2 target layout, then imports the HF folder at TP=2, at PP=2 and at TP=1 (DP=2)
and reads the logits; at TP=1 it also imports Qwen2 with its biases not interleaved by group (the
negative control).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist

ATOL = 1e-5  # as tests/convert/test_convert_parity.py
LAYOUTS = {
    "tp2": ["parallel.tensor_model_parallel_size=2"],
    "pp2": ["parallel.pipeline_model_parallel_size=2"],
    "tp1": [],  # two processes: DP=2
}
MODELS = ("qwen2", "qwen3")


def _import_logits(hf_dir: str, overrides: list[str], tokens: torch.Tensor):
    """Build the layout, load the HF folder into it, tear it down: the logits (None off the last
    pipeline stage)."""
    from megatron_scir.convert import config_from_hf, load_hf_into_model
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.state import destroy_model_parallel, initialize_model_parallel
    from megatron_scir.testing.hf import mcore_logits

    cfg = config_from_hf(hf_dir, "tiny", overrides)
    initialize_model_parallel(cfg.parallel)
    chunks = build_model_chunks(cfg)
    load_hf_into_model(chunks, hf_dir, cfg, progress=False)
    logits = mcore_logits(chunks, tokens)
    destroy_model_parallel()
    return logits


def _biases_not_interleaved(merge_qkv):
    """``merge_qkv`` with the biases concatenated ``[q; k; v]`` instead of per query group."""

    def merge(q, k, v, **kwargs):
        return torch.cat([q, k, v]) if q.dim() == 1 else merge_qkv(q, k, v, **kwargs)

    return merge


def _qwen_run(rank, world_size, folders: dict[str, str], ckpts: dict[str, str], tokens):
    from megatron_scir.convert import config_from_hf, convert_hf_to_mcore, keymap
    from megatron_scir.parallel.runtime import parallel_world

    out = {}
    for name, hf_dir in folders.items():
        target = config_from_hf(hf_dir, "tiny", LAYOUTS["tp2"])
        with parallel_world(target.parallel) as runtime:  # the TP=2 target layout
            convert_hf_to_mcore(runtime, hf_dir, ckpts[name], target, progress=False)
        for layout, overrides in LAYOUTS.items():
            out[f"{name}/{layout}"] = _import_logits(hf_dir, overrides, tokens)
    with mock.patch.object(keymap, "merge_qkv", _biases_not_interleaved(keymap.merge_qkv)):
        out["qwen2/wrong_bias"] = _import_logits(folders["qwen2"], [], tokens)
    return out


@pytest.fixture(scope="module")
def folders(hf_qwen2_dir, hf_qwen3_dir) -> dict[str, Path]:
    return {"qwen2": hf_qwen2_dir, "qwen3": hf_qwen3_dir}


@pytest.fixture(scope="module")
def hf_reference(folders, tokens) -> dict[str, torch.Tensor]:
    from megatron_scir.testing.hf import hf_logits

    return {name: hf_logits(folder, tokens) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qwen_ckpt")
    return {name: root / f"{name}_tp2" for name in MODELS}


@pytest.fixture(scope="module")
def runs(folders, ckpts, tokens) -> dict[str, torch.Tensor]:
    """Rank 1's results (the last pipeline stage at PP=2; at TP=1 and TP=2 as rank 0's)."""
    paths = {name: str(path) for name, path in folders.items()}
    targets = {name: str(path) for name, path in ckpts.items()}
    results = run_distributed(_qwen_run, 2, args=(paths, targets, tokens))
    for key, logits in results[0].items():  # every rank holds the TP=1 and TP=2 logits
        if not key.endswith("pp2"):
            assert torch.equal(logits, results[1][key]), key
    return results[1]


def _max_diff(mcore_logits: torch.Tensor, hf: torch.Tensor) -> float:
    return (mcore_logits[..., : hf.shape[-1]] - hf).abs().max().item()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_qwen_gives_the_transformers_logits_in_float32(runs, hf_reference, name, layout):
    assert _max_diff(runs[f"{name}/{layout}"], hf_reference[name]) < ATOL


def test_qwen2_biases_not_interleaved_by_group_fail_the_logits_comparison(runs, hf_reference):
    assert _max_diff(runs["qwen2/wrong_bias"], hf_reference["qwen2"]) > 1e3 * ATOL


def _hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def _assert_same_tensors(exported: Path, original: Path) -> None:
    found, expected = _hf_tensors(exported), _hf_tensors(original)
    assert found.keys() == expected.keys()
    for name, tensor in expected.items():
        assert found[name].dtype == tensor.dtype and torch.equal(found[name], tensor), name


@pytest.mark.parametrize("name", MODELS)
def test_qwen_hf_to_tp2_to_hf_is_bit_exact_and_loads_in_transformers(
    runs, ckpts, folders, hf_reference, tokens, name, tmp_path
):
    from megatron_scir.checkpoint import read_metadata
    from megatron_scir.checkpoint.layout import inspect_checkpoint
    from megatron_scir.convert import export_to_hf
    from megatron_scir.models.shapes import mcore_tensor_shapes
    from megatron_scir.testing.hf import hf_logits

    m = read_metadata(ckpts[name]).config.model
    assert (m.add_qkv_bias, m.qk_layernorm) == (name == "qwen2", name == "qwen3")
    shapes = {key: shape for key, (shape, _) in inspect_checkpoint(ckpts[name]).tensors.items()}
    assert shapes == mcore_tensor_shapes(m, padded_vocab=384)  # 300 → 64 × TP=2
    out = export_to_hf(ckpts[name], tmp_path / "exported", progress=False)
    _assert_same_tensors(out, folders[name])
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads((folders[name] / "config.json").read_text())
    torch.testing.assert_close(hf_logits(out, tokens), hf_reference[name], atol=0, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_qwen_checkpoint_without_a_stored_config_exports_its_architecture(
    runs, ckpts, folders, hf_reference, tokens, name, tmp_path
):
    from megatron_scir.convert import export_to_hf
    from megatron_scir.testing.hf import hf_logits

    ckpt = shutil.copytree(ckpts[name], tmp_path / "ckpt")
    (ckpt / "hf" / "config.json").unlink()  # as a checkpoint trained from a random init
    out = export_to_hf(ckpt, tmp_path / "exported", progress=False)
    config = json.loads((out / "config.json").read_text())
    original = json.loads((folders[name] / "config.json").read_text())
    for key in ("architectures", "model_type", "tie_word_embeddings", "use_sliding_window"):
        assert config[key] == original[key], key
    _assert_same_tensors(out, folders[name])
    torch.testing.assert_close(hf_logits(out, tokens), hf_reference[name], atol=0, rtol=0)
