"""Atomic megatron-scir checkpoints, and Megatron-LM / NeMo 2 torch_dist checkpoints as inputs.

Two single-process gloo runs serve every test: one writer is SIGKILLed between the tensor files
and the metadata (the parent then inspects what it left), the other saves, reloads, refuses and
reads foreign layouts. The TP=2 → TP=1 / PP=2 reloads live in tests/convert/test_convert_parity.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from unittest import mock

import pytest
import torch

from megatron_scir.checkpoint import (
    METADATA_FILE,
    CheckpointError,
    checkpoint_assets,
    is_complete,
    latest_checkpoint,
    read_metadata,
    resolve_checkpoint,
)
from megatron_scir.testing.distributed import DistributedTestError, run_distributed

pytestmark = pytest.mark.dist


def _tiny(overrides=()):
    from megatron_scir.config import load_config
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.state import destroy_model_parallel, initialize_model_parallel

    cfg = load_config("tiny", list(overrides))
    destroy_model_parallel()
    initialize_model_parallel(cfg.parallel)
    return cfg, build_model_chunks(cfg)


def _weights(chunks) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for c in chunks for n, p in c.named_parameters()}


def _killed_writer(rank, world_size, ckpt):
    from megatron_scir.checkpoint import io

    # a group of its own: SIGKILL reaches the checkpoint writer's helper process too, as a
    # scheduler killing the job would (killing the rank alone orphaned that helper)
    os.setpgrp()
    cfg, chunks = _tiny()
    with mock.patch.object(io, "write_metadata", lambda *a: os.killpg(0, signal.SIGKILL)):
        io.save_checkpoint(ckpt, chunks, cfg, iteration=0, step=0)


def _error(fn) -> str:
    try:
        fn()
    except (CheckpointError, ValueError) as err:
        return str(err)
    return "no error"


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """What a writer SIGKILLed between its tensor files and its metadata leaves behind."""
    from megatron_scir.convert.mcore_to_hf import export_to_hf

    root = tmp_path_factory.mktemp("runs")
    ckpt = root / "iter_0"
    with pytest.raises(DistributedTestError, match="exited with code -9"):
        run_distributed(_killed_writer, 1, args=(str(ckpt),))
    staging = root / "iter_0.incomplete"
    return {
        "final_exists": ckpt.exists(),
        "staging_files": sorted(p.name for p in staging.iterdir()),
        "staging_complete": is_complete(staging),
        "resolve_final": _error(lambda: resolve_checkpoint(ckpt)),
        "resolve_staging": _error(lambda: resolve_checkpoint(staging)),
        "latest": latest_checkpoint(root),
        "export": _error(lambda: export_to_hf(ckpt, root / "hf", progress=False)),
        "export_written": (root / "hf").exists(),
        "root": root,
    }


def test_killed_writer_leaves_only_an_incomplete_directory_that_never_loads(killed):
    assert not killed["final_exists"]
    assert "metadata.json" in killed["staging_files"]  # the tensors were all written…
    assert METADATA_FILE not in killed["staging_files"]  # …but not the commit record
    assert not killed["staging_complete"] and killed["latest"] is None
    assert "iter_0.incomplete exists: its writer did not finish" in killed["resolve_final"]
    assert "is an incomplete checkpoint" in killed["resolve_staging"]
    assert "writer did not finish" in killed["export"] and not killed["export_written"]


def _optimizer_round_trip(root: str) -> dict:
    """Adam after one step, saved with the model; reloaded into a fresh model and optimizer."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_scir.checkpoint import load_checkpoint, save_checkpoint
    from megatron_scir.parallel.ddp import wrap_with_ddp

    def build():
        cfg, chunks = _tiny()
        chunks = wrap_with_ddp(chunks, cfg)
        config = OptimizerConfig(optimizer="adam", lr=1e-2)
        return cfg, chunks, get_megatron_optimizer(config, chunks)

    cfg, chunks, optimizer = build()
    chunks[0].zero_grad_buffer()
    tokens = torch.arange(16).reshape(2, 8)
    chunks[0](tokens, torch.arange(8).expand(2, 8), None).square().mean().backward()
    chunks[0].finish_grad_sync()
    optimizer.step()
    save_checkpoint(f"{root}/opt", chunks, cfg, iteration=1, step=1, optimizer=optimizer)
    _, fresh, fresh_optimizer = build()
    load_checkpoint(f"{root}/opt", fresh, cfg, optimizer=fresh_optimizer)
    return {
        "states": (optimizer.state_dict(), fresh_optimizer.state_dict()),
        "weights": (_weights(chunks), _weights(fresh)),
        "no_state": _error(
            lambda: load_checkpoint(f"{root}/iter_2", fresh, cfg, optimizer=fresh_optimizer)
        ),
    }


def _save_load_and_foreign(rank, world_size, root, asset):
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace

    from megatron_scir.checkpoint import load_checkpoint, save_checkpoint
    from megatron_scir.convert.mcore_to_hf import export_to_hf

    out = {}
    cfg, chunks = _tiny()
    save_checkpoint(f"{root}/iter_0", chunks, cfg, iteration=0, step=0)  # over the killed one
    extra = {"consumed_samples": 128, "seed_state": torch.arange(3)}
    save_checkpoint(
        f"{root}/iter_2", chunks, cfg, iteration=2, step=7, extra_state=extra, assets=[asset]
    )
    out["weights"] = _weights(chunks)
    out["overwrite"] = _error(
        lambda: save_checkpoint(f"{root}/iter_2", chunks, cfg, iteration=2, step=7)
    )
    _, fresh = _tiny()
    loaded = load_checkpoint(f"{root}/iter_2", fresh, cfg)
    out["loaded"], out["state"] = (
        _weights(fresh),
        (loaded.iteration, loaded.step, loaded.extra_state),
    )
    other, other_chunks = _tiny(["model.ffn_hidden_size=128"])
    out["other_model"] = _error(lambda: load_checkpoint(f"{root}/iter_2", other_chunks, other))

    # NeMo 2: the same sharded keys under "module.", in <ckpt>/weights
    cfg, chunks = _tiny()
    sharded = chunks[0].sharded_state_dict()
    dict_list_map_inplace(lambda sh: setattr(sh, "key", f"module.{sh.key}") or sh, sharded)
    os.makedirs(f"{root}/nemo/weights")
    dist_checkpointing.save({"model": sharded}, f"{root}/nemo/weights")
    # Megatron-LM: <save>/iter_0000005 plus its tracker file, args and iteration in common state
    megatron_lm = {
        "model": chunks[0].sharded_state_dict(),
        "iteration": 5,
        "checkpoint_version": 3.0,
        "args": argparse.Namespace(num_layers=2),
    }
    os.makedirs(f"{root}/mlm/iter_0000005")
    dist_checkpointing.save(megatron_lm, f"{root}/mlm/iter_0000005")
    with open(f"{root}/mlm/latest_checkpointed_iteration.txt", "w") as f:
        f.write("5")
    out["foreign_weights"] = _weights(chunks)
    for name in ("nemo", "mlm"):
        _, fresh = _tiny()
        loaded = load_checkpoint(f"{root}/{name}", fresh, cfg)
        out[name] = (_weights(fresh), loaded.step, loaded.metadata)
    out["mlm_other_model"] = _error(lambda: load_checkpoint(f"{root}/mlm", other_chunks, other))
    export_to_hf(f"{root}/nemo", f"{root}/nemo_hf", cfg=cfg, progress=False)
    out["export_without_config"] = _error(lambda: export_to_hf(f"{root}/mlm", f"{root}/x"))
    out["optimizer"] = _optimizer_round_trip(root)
    return out


@pytest.fixture(scope="module")
def saved(killed, tmp_path_factory):
    root = killed["root"]
    asset = tmp_path_factory.mktemp("assets") / "tokenizer.json"
    asset.write_text('{"version": "1.0"}')
    return root, run_distributed(_save_load_and_foreign, 1, args=(str(root), str(asset)))[0]


def _tensors(tree) -> list[torch.Tensor]:
    """The tensors of a nested state, in key order (loading may reorder dict entries)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        tree = [tree[key] for key in sorted(tree, key=str)]
    return [t for value in tree for t in _tensors(value)] if isinstance(tree, list) else []


def _assert_equal_weights(found, expected):
    assert found.keys() == expected.keys()
    assert all(torch.equal(found[n], expected[n]) for n in expected)


def test_a_new_save_replaces_the_incomplete_directory(saved):
    root, _ = saved
    assert is_complete(root / "iter_0") and not (root / "iter_0.incomplete").exists()


def test_saved_weights_and_extra_state_load_back_exactly(saved):
    _, out = saved
    _assert_equal_weights(out["loaded"], out["weights"])
    iteration, step, extra = out["state"]
    assert (iteration, step, extra["consumed_samples"]) == (2, 7, 128)
    assert torch.equal(extra["seed_state"], torch.arange(3))


def test_metadata_records_format_config_position_layout_and_assets(saved):
    from megatron_scir.config import load_config

    root, _ = saved
    meta = read_metadata(root / "iter_2")
    assert (meta.format_version, meta.iteration, meta.step) == (1, 2, 7)
    assert meta.config == load_config("tiny") and meta.padded_vocab_size == 256
    assert meta.layout == {
        "tensor_model_parallel_size": 1,
        "pipeline_model_parallel_size": 1,
        "virtual_pipeline_model_parallel_size": None,
        "world_size": 1,
    }
    assert meta.contents == ("model", "extra_state") and meta.assets == ("tokenizer.json",)
    assert [p.name for p in checkpoint_assets(root / "iter_2")] == ["tokenizer.json"]
    assert json.loads((root / "iter_2" / METADATA_FILE).read_text())["format"].startswith("megat")


def test_latest_checkpoint_is_the_highest_iteration_and_step(saved):
    root, _ = saved
    assert latest_checkpoint(root) == root / "iter_2"


def test_existing_checkpoint_is_not_overwritten_by_default(saved):
    _, out = saved
    assert "already exists; pass overwrite=True" in out["overwrite"]


def test_checkpoint_of_another_model_is_refused_naming_the_field(saved):
    _, out = saved
    assert "model.ffn_hidden_size is 256 there, 128 in the config" in out["other_model"]


def test_nemo2_and_megatron_lm_checkpoints_load_with_their_weights(saved):
    root, out = saved
    for name, step in (("nemo", 0), ("mlm", 5)):
        weights, loaded_step, metadata = out[name]
        _assert_equal_weights(weights, out["foreign_weights"])
        assert (loaded_step, metadata) == (step, None), name
    assert resolve_checkpoint(root / "mlm") == root / "mlm" / "iter_0000005"
    assert resolve_checkpoint(root / "nemo") == root / "nemo" / "weights"


def test_foreign_checkpoint_of_another_shape_is_refused_naming_tensor_and_shapes(saved):
    _, out = saved
    assert (
        "tensor decoder.layers.mlp.linear_fc1.weight: expected shape [2, 256, 96] for "
        "model.num_layers=2"
    ) in out["mlm_other_model"]
    assert "found [2, 512, 96]" in out["mlm_other_model"]


def test_nemo2_checkpoint_exports_to_hf_and_foreign_export_needs_a_config(saved):
    from safetensors.torch import load_file

    root, out = saved
    tensors = load_file(root / "nemo_hf" / "model.safetensors")
    embed = out["foreign_weights"]["embedding.word_embeddings.weight"]
    assert torch.equal(tensors["model.embed_tokens.weight"], embed)
    assert tensors["model.layers.1.self_attn.q_proj.weight"].shape == (96, 96)
    assert "pass the model config" in out["export_without_config"]


def test_optimizer_state_is_saved_and_loaded_with_the_model(saved):
    _, out = saved
    (state, loaded), (weights, loaded_weights) = (
        out["optimizer"]["states"],
        out["optimizer"]["weights"],
    )
    _assert_equal_weights(loaded_weights, weights)
    saved_tensors, loaded_tensors = _tensors(state), _tensors(loaded)
    assert len(saved_tensors) == len(loaded_tensors) > 0
    assert any(t.abs().sum() > 0 for t in saved_tensors)  # Adam moments after one step
    assert all(torch.equal(a, b) for a, b in zip(saved_tensors, loaded_tensors, strict=True))
    assert "holds no optimizer state" in out["optimizer"]["no_state"]


def _saves_after_its_children_got_stop_signals(rank, world_size, root):
    """Save, send SIGUSR1 and SIGTERM to every child process (as Slurm signals a whole job
    step), save again: the second save must not find its writer queue dead."""
    import time
    from pathlib import Path

    from megatron_scir.checkpoint import io

    cfg, chunks = _tiny()
    io.save_checkpoint(f"{root}/first", chunks, cfg, iteration=0, step=0)
    children = [
        int(pid)
        for task in Path(f"/proc/{os.getpid()}/task").iterdir()
        for pid in (task / "children").read_text().split()
    ]
    assert children, "dist_checkpointing started no writer process: nothing to check"
    for pid in children:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            os.kill(pid, sig)
    time.sleep(0.5)
    io.save_checkpoint(f"{root}/second", chunks, cfg, iteration=0, step=1)
    return len(children)


def test_checkpoint_writer_survives_slurm_stop_signals(tmp_path):
    # Slurm's --signal / scancel --signal reach every process of the step; the checkpoint
    # writer's multiprocessing Manager used to die on SIGUSR1 and break the save asked for.
    (children,) = run_distributed(_saves_after_its_children_got_stop_signals, 1,
                                  args=(str(tmp_path),))
    assert children >= 1
    assert is_complete(tmp_path / "second")
