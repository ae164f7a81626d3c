"""``scir convert``: the subcommands, and refusals that name the problem and write nothing.

Refusals happen before any process group starts, so these run in the test process.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_scir.convert.command import main, register, run
from megatron_scir.testing.hf import tiny_hf_llama


def test_register_adds_convert_with_both_directions():
    parser = argparse.ArgumentParser(prog="scir")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "convert",
            "hf-to-mcore",
            "--hf-dir",
            "H",
            "--out",
            "C",
            "--tp",
            "2",
            "--config",
            "mistral_7b",
            "train.lr=1e-5",
        ]
    )
    assert (args.func, args.tp, args.pp, args.overrides) == (run, 2, None, ["train.lr=1e-5"])
    args = parser.parse_args(
        [
            "convert",
            "mcore-to-hf",
            "--ckpt",
            "C",
            "--out",
            "H",
            "--dtype",
            "bf16",
            "--max-shard-size",
            "2GB",
        ]
    )
    assert (args.convert_command, args.dtype, args.max_shard_size) == ("mcore-to-hf", "bf16", 2e9)


@pytest.fixture()
def hf_dir(tmp_path):
    out = tmp_path / "hf"
    tiny_hf_llama(out)
    return out


def _convert(hf_dir, out) -> int:
    return main(["hf-to-mcore", "--hf-dir", str(hf_dir), "--out", str(out), "--no-progress"])


def _assert_nothing_written(out) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".incomplete").exists()


def test_unsupported_architecture_is_refused_naming_it(hf_dir, tmp_path, capsys):
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(
        json.dumps({**config, "architectures": ["GPT2LMHeadModel"]})
    )
    assert _convert(hf_dir, tmp_path / "ckpt") == 2
    assert "architectures: expected one of LlamaForCausalLM" in capsys.readouterr().err
    _assert_nothing_written(tmp_path / "ckpt")


def _rewrite_weights(hf_dir, change) -> None:
    tensors = load_file(hf_dir / "model.safetensors")
    change(tensors)
    save_file(tensors, hf_dir / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_refused_naming_it_and_its_shape(hf_dir, tmp_path, capsys):
    _rewrite_weights(hf_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    assert _convert(hf_dir, tmp_path / "ckpt") == 2
    err = capsys.readouterr().err
    assert "tensor model.layers.1.mlp.up_proj.weight is missing (expected shape [160, 64])" in err
    _assert_nothing_written(tmp_path / "ckpt")


def test_wrong_shape_tensor_is_refused_with_expected_and_found_shape(hf_dir, tmp_path, capsys):
    def widen(tensors):
        tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(48, 64)

    _rewrite_weights(hf_dir, widen)
    assert _convert(hf_dir, tmp_path / "ckpt") == 2
    err = capsys.readouterr().err
    assert "model.layers.0.self_attn.k_proj.weight: expected shape [32, 64], found [48, 64]" in err
    _assert_nothing_written(tmp_path / "ckpt")


def test_extra_layer_is_refused_as_an_unexpected_tensor(hf_dir, tmp_path, capsys):
    def add_layer(tensors):
        tensors["model.layers.2.input_layernorm.weight"] = torch.ones(64)

    _rewrite_weights(hf_dir, add_layer)
    assert _convert(hf_dir, tmp_path / "ckpt") == 2
    assert "unexpected tensor model.layers.2.input_layernorm.weight" in capsys.readouterr().err
    _assert_nothing_written(tmp_path / "ckpt")
