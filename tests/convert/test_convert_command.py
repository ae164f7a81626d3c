"""``scir convert``: the subcommands, and refusals that name the problem and write nothing.

Refusals happen before any process group starts, so these run in the test process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_scir.cli import main as scir_main
from megatron_scir.cli.convert import register, run
from megatron_scir.testing.hf import tiny_hf_llama


def main(argv: list[str]) -> int:
    return scir_main(["convert", *argv])


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


@pytest.mark.dist
def test_bf16_mistral_round_trips_through_both_commands_bit_for_bit(tmp_path):
    from megatron_scir.testing.hf import tiny_hf_mistral

    hf, ckpt, back = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "back"
    tiny_hf_mistral(hf, dtype=torch.bfloat16, tokenizer=True)
    cmd = [
        sys.executable,
        "-m",
        "megatron_scir.cli",
        "convert",
        "hf-to-mcore",
        "--hf-dir",
        str(hf),
        "--out",
        str(ckpt),
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(back), "--no-progress"]) == 0
    original, exported = load_file(hf / "model.safetensors"), load_file(back / "model.safetensors")
    assert exported.keys() == original.keys()
    for name, tensor in original.items():
        assert exported[name].dtype == torch.bfloat16 and torch.equal(exported[name], tensor), name
    config = json.loads((back / "config.json").read_text())
    assert config == json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["MistralForCausalLM"] and config["dtype"] == "bfloat16"
    assert (back / "tokenizer_config.json").is_file()
    wide = tmp_path / "fp32"
    argv = ["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(wide), "--dtype", "fp32"]
    assert main([*argv, "--no-progress"]) == 0
    upcast = load_file(wide / "model.safetensors")
    assert all(torch.equal(upcast[n], t.float()) for n, t in original.items())
    assert json.loads((wide / "config.json").read_text())["dtype"] == "float32"


def test_conversion_builds_local_spec_and_pads_the_vocabulary_for_the_target_layout():
    from megatron_scir.config import load_config
    from megatron_scir.convert.errors import ConversionError
    from megatron_scir.convert.hf_to_mcore import conversion_layout
    from megatron_scir.models import padded_vocab_size

    target = load_config("llama3_70b_fp8")  # TE spec, FP8, TP 8, PP 4
    one = conversion_layout(target, world_size=1)
    assert (one.model.transformer_impl, one.model.fp8, one.parallel.tensor_model_parallel_size) == (
        "local",
        None,
        1,
    )
    assert padded_vocab_size(one) == padded_vocab_size(target) == 129024  # 128256 → 1024·126
    many = conversion_layout(target, world_size=64)
    assert many.parallel == target.parallel and many.model.transformer_impl == "local"
    with pytest.raises(ConversionError, match="not a multiple of TP × PP = 8 × 4"):
        conversion_layout(target, world_size=12)


def test_a_short_context_model_converts_whatever_the_generation_budgets_say(tmp_path):
    """Conversion reads no generation setting, so it never refuses a model for one (the tiny
    preset's 32 + 32 generation tokens do not fit 48 positions)."""
    hf_dir = tmp_path / "hf"
    tiny_hf_llama(hf_dir, max_position_embeddings=48)
    out = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "megatron_scir.cli", "convert", "hf-to-mcore", "--no-progress"]
    cmd += ["--hf-dir", str(hf_dir), "--out", str(out), "--config", "tiny"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "scir_checkpoint.json").is_file()
