"""HF → Megatron-Core gives the HF logits at TP=1, TP=2 and PP=2; a checkpoint written at TP=2
loads at TP=1 and PP=2 with the same weights; HF → Megatron (TP=2) → HF is bit-exact. A model with
tied embeddings stays tied: HF → Megatron (TP=2 and PP=2) → HF is bit-exact, without ``lm_head``.

Three gloo runs serve every test here (module fixtures): TP=2 (convert the untied and the tied
model at the target layout, import straight into the model, reload the written checkpoint), TP=1
(Llama, Mistral and tied logits, the negative controls, the TP=2 checkpoint at TP=1) and PP=2
(import, the TP=2 checkpoints, and converting the tied model at PP=2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist

ATOL = 1e-5
VOCAB = 300  # conftest's hf_llama_dir: pads to 320 at TP=1, 384 at TP=2 (64 × TP)
TP2 = "parallel.tensor_model_parallel_size=2"
PP2 = "parallel.pipeline_model_parallel_size=2"
# negative controls: the qkv heads not interleaved by group; gate and up swapped
WRONG_LAYOUTS = {
    "wrong_qkv": ("merge_qkv", lambda q, k, v, **_: torch.cat([q, k, v])),
    "wrong_fc1": ("merge_fc1", lambda gate, up: torch.cat([up, gate])),
}


def _import(hf_dir: str, overrides: list[str], tokens: torch.Tensor):
    """Build the layout, load the HF folder into it: (cfg, chunks, logits or None)."""
    from megatron_scir.convert import config_from_hf, load_hf_into_model
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.state import initialize_model_parallel
    from megatron_scir.testing.hf import mcore_logits

    cfg = config_from_hf(hf_dir, "tiny", overrides)
    initialize_model_parallel(cfg.parallel)
    chunks = build_model_chunks(cfg)
    load_hf_into_model(chunks, hf_dir, cfg, progress=False)
    return cfg, chunks, mcore_logits(chunks, tokens)


def _from_checkpoint(ckpt: str, cfg, tokens: torch.Tensor):
    """Fresh chunks of the current layout loaded from ``ckpt``: (logits, master weights)."""
    from megatron_scir.checkpoint import load_checkpoint
    from megatron_scir.models import build_model_chunks
    from megatron_scir.testing.hf import mcore_logits
    from megatron_scir.testing.weights import gather_master

    chunks = build_model_chunks(cfg)
    load_checkpoint(ckpt, chunks, cfg)
    return mcore_logits(chunks, tokens), gather_master(chunks, grads=False)


def _convert(hf_dir: str, ckpt: str, overrides: list[str]) -> None:
    """``convert_hf_to_mcore`` in the harness's world, at the target layout."""
    from megatron_scir.convert import config_from_hf, convert_hf_to_mcore
    from megatron_scir.parallel.runtime import parallel_world

    target = config_from_hf(hf_dir, "tiny", overrides)
    with parallel_world(target.parallel) as runtime:
        convert_hf_to_mcore(runtime, hf_dir, ckpt, target, progress=False)


def _tp2_run(rank, world_size, hf_dir, tied_dir, ckpt, tied_ckpt, tokens):
    from megatron_scir.parallel.state import destroy_model_parallel
    from megatron_scir.testing.weights import gather_master

    _convert(hf_dir, ckpt, [TP2])  # 2 processes: the TP=2 target layout
    _convert(tied_dir, tied_ckpt, [TP2])
    cfg, chunks, logits = _import(hf_dir, [TP2], tokens)
    _, reloaded = _from_checkpoint(ckpt, cfg, tokens)
    out = {"logits": logits, "weights": gather_master(chunks, grads=False), "reloaded": reloaded}
    destroy_model_parallel()
    _, chunks, out["tied_logits"] = _import(tied_dir, [TP2], tokens)
    out["tied_weights"] = gather_master(chunks, grads=False)
    return out


def _tp1_run(rank, world_size, llama, mistral, tied, ckpt, tokens):
    from megatron_scir.convert import keymap
    from megatron_scir.parallel.state import destroy_model_parallel

    out = {}
    for name, hf_dir in (("mistral", mistral), ("tied", tied)):
        _, _, out[name] = _import(hf_dir, [], tokens)
        destroy_model_parallel()
    for name, (helper, wrong) in WRONG_LAYOUTS.items():
        with mock.patch.object(keymap, helper, wrong):
            _, _, out[name] = _import(llama, [], tokens)
        destroy_model_parallel()
    cfg, chunks, out["llama"] = _import(llama, [], tokens)
    sharded = chunks[0].sharded_state_dict()
    out["keys"] = {name: sh.key for name, sh in sharded.items() if "_extra_state" not in name}
    out["ckpt_logits"], out["ckpt_weights"] = _from_checkpoint(ckpt, cfg, tokens)
    return out


def _pp2_run(rank, world_size, hf_dir, tied_dir, ckpt, tied_ckpt, tied_pp2_ckpt, tokens):
    from megatron_scir.parallel.state import destroy_model_parallel

    cfg, _, logits = _import(hf_dir, [PP2], tokens)
    ckpt_logits, ckpt_weights = _from_checkpoint(ckpt, cfg, tokens)
    out = {"logits": logits, "ckpt_logits": ckpt_logits, "ckpt_weights": ckpt_weights}
    destroy_model_parallel()
    _convert(tied_dir, tied_pp2_ckpt, [PP2])  # the last stage saves its copy of the embeddings
    cfg, _, out["tied_logits"] = _import(tied_dir, [PP2], tokens)
    out["tied_ckpt_logits"], out["tied_ckpt_weights"] = _from_checkpoint(tied_ckpt, cfg, tokens)
    return out


@pytest.fixture(scope="module")
def hf_reference(hf_llama_dir, hf_mistral_dir, hf_tied_dir, tokens):
    from megatron_scir.testing.hf import hf_logits

    folders = {"llama": hf_llama_dir, "mistral": hf_mistral_dir, "tied": hf_tied_dir}
    return {name: hf_logits(folder, tokens) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def tied_ckpts(tmp_path_factory) -> dict[str, Path]:
    """Where the tied model is converted: at TP=2 (by ``tp2``) and at PP=2 (by ``pp2``)."""
    root = tmp_path_factory.mktemp("tied_ckpt")
    return {"tp2": root / "tied_tp2", "pp2": root / "tied_pp2"}


@pytest.fixture(scope="module")
def tp2(hf_llama_dir, hf_tied_dir, tied_ckpts, tokens, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt") / "llama_tp2"
    args = (str(hf_llama_dir), str(hf_tied_dir), str(ckpt), str(tied_ckpts["tp2"]), tokens)
    return ckpt, run_distributed(_tp2_run, 2, args=args)


@pytest.fixture(scope="module")
def tp1(hf_llama_dir, hf_mistral_dir, hf_tied_dir, tokens, tp2):
    ckpt, _ = tp2
    args = (str(hf_llama_dir), str(hf_mistral_dir), str(hf_tied_dir), str(ckpt), tokens)
    return run_distributed(_tp1_run, 1, args=args)[0]


@pytest.fixture(scope="module")
def pp2(hf_llama_dir, hf_tied_dir, tied_ckpts, tokens, tp2):
    ckpt, _ = tp2
    ckpts = (str(ckpt), str(tied_ckpts["tp2"]), str(tied_ckpts["pp2"]))
    results = run_distributed(
        _pp2_run, 2, args=(str(hf_llama_dir), str(hf_tied_dir), *ckpts, tokens)
    )
    return results[1]  # the last stage holds the logits


def test_local_spec_parameters_are_saved_under_the_keymaps_checkpoint_keys(tp1, hf_llama_dir):
    from megatron_scir.convert import config_from_hf
    from megatron_scir.convert.keymap import iter_tensor_maps, parameter_name

    for name, key in tp1["keys"].items():
        layer = int(name.split(".")[2]) if key.startswith("decoder.layers.") else None
        assert parameter_name(key, "local", layer) == name
    m = config_from_hf(hf_llama_dir).model
    assert set(tp1["keys"].values()) == {entry.mcore for entry, _ in iter_tensor_maps(m)}


def _max_diff(mcore_logits: torch.Tensor, hf: torch.Tensor) -> float:
    return (mcore_logits[..., : hf.shape[-1]] - hf).abs().max().item()


def _assert_same_weights(found: dict, expected: dict) -> None:
    """Bit-identical, vocabulary rows compared up to the tokenizer's (padding may differ)."""
    assert found.keys() == expected.keys()
    for name, want in expected.items():
        got = found[name]
        if name.endswith(("word_embeddings.weight", "output_layer.weight")):
            got, want = got[:VOCAB], want[:VOCAB]
        assert torch.equal(got, want), name


def test_llama_gqa_with_own_head_dim_and_rope_scaling_gives_hf_logits_at_tp1(tp1, hf_reference):
    assert _max_diff(tp1["llama"], hf_reference["llama"]) < ATOL


def test_mistral_with_one_kv_head_gives_hf_logits_at_tp1(tp1, hf_reference):
    assert _max_diff(tp1["mistral"], hf_reference["mistral"]) < ATOL


def test_tied_embeddings_model_gives_hf_logits_at_tp1_tp2_and_pp2(tp1, tp2, pp2, hf_reference):
    _, results = tp2
    found = [tp1["tied"], *(rank["tied_logits"] for rank in results), pp2["tied_logits"]]
    for logits in found:
        assert _max_diff(logits, hf_reference["tied"]) < ATOL


def test_tied_model_has_no_output_layer_of_its_own(tp2):
    _, results = tp2
    weights = results[0]["tied_weights"]  # one stage: the output layer uses the embeddings
    assert "output_layer.weight" not in weights and "embedding.word_embeddings.weight" in weights


def test_tied_tp2_checkpoint_loads_at_pp2_with_the_last_stage_holding_the_embeddings(
    tp2, pp2, hf_reference
):
    _, results = tp2
    loaded = dict(pp2["tied_ckpt_weights"])
    embedding = loaded.pop("embedding.word_embeddings.weight")
    assert torch.equal(loaded.pop("output_layer.weight"), embedding)  # the last stage's copy
    _assert_same_weights(
        {**loaded, "embedding.word_embeddings.weight": embedding}, results[0]["tied_weights"]
    )
    assert _max_diff(pp2["tied_ckpt_logits"], hf_reference["tied"]) < ATOL


def test_llama_gives_hf_logits_at_tp2(tp2, hf_reference):
    _, results = tp2
    for rank in results:
        assert _max_diff(rank["logits"], hf_reference["llama"]) < ATOL


def test_llama_gives_hf_logits_at_pp2(pp2, hf_reference):
    assert _max_diff(pp2["logits"], hf_reference["llama"]) < ATOL


def test_wrong_qkv_or_fc1_layout_fails_the_logits_comparison(tp1, hf_reference):
    # the negative controls: the comparison above can fail, and by far more than its tolerance
    for name in ("wrong_qkv", "wrong_fc1"):
        assert _max_diff(tp1[name], hf_reference["llama"]) > 1e4 * ATOL, name


def test_checkpoint_of_tp2_conversion_holds_the_imported_weights(tp2):
    _, results = tp2
    _assert_same_weights(results[0]["reloaded"], results[0]["weights"])


def test_tp2_checkpoint_loads_at_tp1_with_identical_weights_and_logits(tp1, tp2, hf_reference):
    _, results = tp2
    _assert_same_weights(tp1["ckpt_weights"], results[0]["weights"])
    assert _max_diff(tp1["ckpt_logits"], hf_reference["llama"]) < ATOL


def test_tp2_checkpoint_loads_at_pp2_with_identical_weights_and_logits(pp2, tp2, hf_reference):
    _, results = tp2
    _assert_same_weights(pp2["ckpt_weights"], results[0]["weights"])
    assert _max_diff(pp2["ckpt_logits"], hf_reference["llama"]) < ATOL


def test_vocabulary_is_padded_with_zero_rows_for_each_layout(tp1, tp2):
    _, results = tp2
    for weights, padded in ((results[0]["weights"], 384), (tp1["ckpt_weights"], 320)):
        for name in ("embedding.word_embeddings.weight", "output_layer.weight"):
            assert weights[name].shape[0] == padded, name  # 300 → multiple of 64 × TP
            assert not weights[name][VOCAB:].any(), name


def _hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_hf_to_tp2_to_hf_round_trip_is_bit_exact_and_loads_in_transformers(
    tp2, hf_llama_dir, tokens, hf_reference, tmp_path
):
    from megatron_scir.cli import main
    from megatron_scir.testing.hf import hf_logits

    ckpt, _ = tp2
    out = tmp_path / "exported"
    argv = ["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(out), "--max-shard-size", "60KB"]
    assert main(["convert", *argv, "--no-progress"]) == 0
    original, exported = _hf_tensors(hf_llama_dir), _hf_tensors(out)
    assert exported.keys() == original.keys()
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name
    assert (out / "model.safetensors.index.json").is_file()
    assert (out / "tokenizer.json").read_bytes() == (hf_llama_dir / "tokenizer.json").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads((hf_llama_dir / "config.json").read_text())
    torch.testing.assert_close(hf_logits(out, tokens), hf_reference["llama"], atol=0, rtol=0)


def test_one_process_cli_conversion_writes_what_a_tp2_world_writes(tp2, hf_llama_dir, tmp_path):
    from megatron_scir.checkpoint import read_metadata
    from megatron_scir.checkpoint.layout import inspect_checkpoint, load_global_tensors

    ckpt, _ = tp2
    out = tmp_path / "one_process"
    cmd = [
        sys.executable,
        "-m",
        "megatron_scir.cli",
        "convert",
        "hf-to-mcore",
        "--hf-dir",
        str(hf_llama_dir),
        "--out",
        str(out),
        "--tp",
        "2",
        "--config",
        "tiny",
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single, world2 = inspect_checkpoint(out), inspect_checkpoint(ckpt)
    assert single.tensors == world2.tensors  # same keys, global shapes (vocabulary 384) and dtypes
    for layer in (None, 0, 1):
        keys = [k for k in world2.tensors if k.startswith("decoder.layers.") == (layer is not None)]
        a, b = load_global_tensors(single, keys, layer), load_global_tensors(world2, keys, layer)
        for key in keys:
            assert torch.equal(a[key], b[key]), (key, layer)
    meta = read_metadata(out)
    assert meta.layout["tensor_model_parallel_size"] == 2 and meta.layout["world_size"] == 1
    assert meta.padded_vocab_size == 384
    assert "tokenizer.json" in meta.assets and "config.json" in meta.assets


def test_export_with_the_config_of_another_model_is_refused_and_writes_nothing(
    tp2, tmp_path, capsys
):
    from megatron_scir.cli import main

    ckpt, _ = tp2
    out = tmp_path / "hf"
    argv = ["mcore-to-hf", "--ckpt", str(ckpt), "--out", str(out), "--config", "tiny"]
    assert main(["convert", *argv]) == 2
    assert "model.hidden_size is 64 there, 96 in the config" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "hf.incomplete").exists()


@pytest.mark.parametrize("written_at", ["tp2", "pp2"])
def test_tied_hf_to_mcore_to_hf_is_bit_exact_and_stays_tied(
    tp2, pp2, tied_ckpts, written_at, hf_tied_dir, tokens, hf_reference, tmp_path
):
    from megatron_scir.checkpoint.layout import inspect_checkpoint
    from megatron_scir.convert import export_to_hf
    from megatron_scir.testing.hf import hf_logits

    ckpt = tied_ckpts[written_at]
    assert "output_layer.weight" not in inspect_checkpoint(ckpt).tensors
    out = export_to_hf(ckpt, tmp_path / "exported", progress=False)
    original, exported = _hf_tensors(hf_tied_dir), _hf_tensors(out)
    assert "lm_head.weight" not in exported and exported.keys() == original.keys()
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert config == json.loads((hf_tied_dir / "config.json").read_text())
    torch.testing.assert_close(hf_logits(out, tokens), hf_reference["tied"], atol=0, rtol=0)


def test_a_tied_checkpoint_is_refused_for_an_untied_config_and_the_reverse(tp2, tied_ckpts):
    import dataclasses

    from megatron_scir.checkpoint import CheckpointError, read_metadata
    from megatron_scir.checkpoint.layout import check_model_shapes, inspect_checkpoint

    ckpt, _ = tp2
    for path, set_to in ((tied_ckpts["tp2"], "true"), (ckpt, "false")):
        m = read_metadata(path).config.model
        wrong = dataclasses.replace(
            m, share_embeddings_and_output_weights=not m.share_embeddings_and_output_weights
        )
        with pytest.raises(
            CheckpointError, match=f"share_embeddings_and_output_weights=.*{set_to}$"
        ):
            check_model_shapes(inspect_checkpoint(path), wrong)
