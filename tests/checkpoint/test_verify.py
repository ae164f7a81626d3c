"""A checkpoint carries the size and SHA-256 of its files; ``scir verify`` and every load check
them, so a damaged checkpoint is refused in one line naming the file, never loaded.

One single-process gloo run saves a tiny model with its Adam state and tokenizer; the parent makes
damaged copies (a flipped byte in a weight, a ``.distcp`` truncated inside the optimizer part,
missing ``metadata.json`` / ``.metadata``, a truncated file in a checkpoint without recorded
hashes), runs ``scir verify`` on each, and a second gloo run loads each for generation.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from megatron_scir.cli import main as scir_main
from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist


@pytest.fixture(autouse=True, scope="module")
def _hash_cache(tmp_path_factory):
    """A cache file of this module's own (never the user's)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SCIR_HASH_CACHE", str(tmp_path_factory.mktemp("cache") / "hashes.json"))
    yield
    mp.undo()


def _save_with_optimizer(rank, world_size, ckpt, tokenizer):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_scir.checkpoint import save_checkpoint
    from megatron_scir.config import load_config
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.ddp import wrap_with_ddp
    from megatron_scir.parallel.runtime import parallel_world

    cfg = load_config("tiny", [f"data.tokenizer_path={tokenizer}"])
    with parallel_world(cfg.parallel) as runtime:
        runtime.reseed(3)
        chunks = wrap_with_ddp(build_model_chunks(cfg), cfg)
        optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-2), chunks)
        chunks[0].zero_grad_buffer()
        tokens = torch.arange(16).reshape(2, 8)
        chunks[0](tokens, torch.arange(8).expand(2, 8), None).square().mean().backward()
        chunks[0].finish_grad_sync()
        optimizer.step()
        save_checkpoint(
            ckpt, chunks, cfg, iteration=1, step=1, optimizer=optimizer, assets=[tokenizer]
        )


def _load_each(rank, world_size, paths, tokenizer):
    """Load every checkpoint of ``paths`` for generation (weights only): the error or "loaded"."""
    from megatron_scir.checkpoint import CheckpointError, load_checkpoint
    from megatron_scir.config import load_config
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.runtime import parallel_world

    cfg = load_config("tiny", [f"data.tokenizer_path={tokenizer}"])
    out = {}
    with parallel_world(cfg.parallel):
        for name, path in paths.items():
            chunks = build_model_chunks(cfg, init_weights=False)
            try:
                load_checkpoint(path, chunks, cfg)
                out[name] = "loaded"
            except CheckpointError as error:
                out[name] = f"CheckpointError: {error}"
            except BaseException as error:  # noqa: BLE001 -- what a user would have seen
                # (torch's CheckpointException derives from BaseException)
                out[name] = f"{type(error).__name__}: {error}"
    return out


def _storage(ckpt: Path) -> list[tuple[str, int, int]]:
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(ckpt)).read_metadata()
    items = [(k.fqn, v.offset, v.length) for k, v in meta.storage_data.items()]
    return sorted(items, key=lambda item: item[1])


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    from megatron_scir.testing.tokenizers import train_tiny_sentencepiece

    root = tmp_path_factory.mktemp("verify")
    tokenizer = train_tiny_sentencepiece(root / "sp")
    good = root / "good"
    run_distributed(_save_with_optimizer, 1, args=(str(good), str(tokenizer)))
    storage = _storage(good)
    copies = {}

    def copy(name: str) -> Path:
        copies[name] = root / name
        shutil.copytree(good, copies[name])
        return copies[name]

    # one byte in the middle of the embedding's bytes
    _, offset, length = next(s for s in storage if s[0] == "embedding.word_embeddings.weight")
    flipped = copy("flipped") / "__0_0.distcp"
    data = bytearray(flipped.read_bytes())
    data[offset + length // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    # cut inside the first optimizer entry: every model tensor is still whole
    first_opt = next(s for s in storage if s[0].startswith("optimizer."))
    with open(copy("truncated_optimizer") / "__0_0.distcp", "r+b") as fh:
        fh.truncate(first_opt[1] + first_opt[2] // 2)
    (copy("no_metadata_json") / "metadata.json").unlink()
    (copy("no_dist_index") / ".metadata").unlink()
    # a checkpoint from before recorded hashes, cut inside a weight of the model part
    old = copy("old_truncated")
    meta = json.loads((old / "scir_checkpoint.json").read_text())
    meta.pop("files", None)
    meta.pop("tokenizer", None)
    (old / "scir_checkpoint.json").write_text(json.dumps(meta))
    _, offset, length = next(s for s in storage if s[0] == "output_layer.weight")
    with open(old / "__0_0.distcp", "r+b") as fh:
        fh.truncate(offset + length // 2)
    paths = {"good": str(good), **{k: str(v) for k, v in copies.items()}}
    (loads,) = run_distributed(_load_each, 1, args=(paths, str(tokenizer)))
    return {"root": root, "good": good, "copies": copies, "loads": loads,
            "first_opt": first_opt[0], "tokenizer": tokenizer}


def _verify(path, capsys) -> tuple[int, str, str]:
    code = scir_main(["verify", str(path)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_save_records_the_size_and_sha256_of_every_file(damaged):
    good = damaged["good"]
    meta = json.loads((good / "scir_checkpoint.json").read_text())
    on_disk = sorted(
        p.relative_to(good).as_posix()
        for p in good.rglob("*")
        if p.is_file() and p.name != "scir_checkpoint.json"
    )
    assert sorted(meta["files"]) == on_disk
    assert {"__0_0.distcp", ".metadata", "metadata.json", "hf/tiny_sp_256.model"} <= set(on_disk)
    for name, entry in meta["files"].items():
        data = (good / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    tokenizer = damaged["tokenizer"].read_bytes()
    assert meta["tokenizer"] == "sha256:" + hashlib.sha256(tokenizer).hexdigest()


def test_scir_verify_a_good_checkpoint_says_ok_in_one_line(damaged, capsys):
    code, out, err = _verify(damaged["good"], capsys)
    assert code == 0, err
    assert out.count("\n") == 1 and out.startswith(f"{damaged['good']}: OK (")
    assert "match the SHA-256 recorded at save" in out


def test_scir_verify_a_flipped_byte_in_the_weights_exits_2_naming_the_file(damaged, capsys):
    code, out, err = _verify(damaged["copies"]["flipped"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("scir verify: error: checkpoint ")
    assert "flipped/__0_0.distcp: content differs from the SHA-256 recorded at save" in err


def test_scir_verify_a_file_truncated_in_the_optimizer_part_names_the_first_lost_tensor(
    damaged, capsys
):
    code, _, err = _verify(damaged["copies"]["truncated_optimizer"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "truncated_optimizer/__0_0.distcp: truncated at " in err
    assert f"the bytes of {damaged['first_opt']} onwards are missing" in err


def test_loading_a_checkpoint_whose_weights_were_overwritten_is_refused(damaged):
    assert damaged["loads"]["good"] == "loaded"
    error = damaged["loads"]["flipped"]
    assert error.startswith("CheckpointError: checkpoint ") and "is damaged" in error
    assert "__0_0.distcp: content differs" in error and "scir verify" in error


def test_loading_for_generation_a_checkpoint_truncated_in_the_optimizer_part_is_refused(damaged):
    error = damaged["loads"]["truncated_optimizer"]
    assert error.startswith("CheckpointError: ") and "__0_0.distcp: truncated at" in error


@pytest.mark.parametrize(
    ("name", "missing"), [("no_metadata_json", "metadata.json"), ("no_dist_index", ".metadata")]
)
def test_a_missing_dist_checkpoint_index_is_one_line_naming_it(damaged, name, missing, capsys):
    error = damaged["loads"][name]
    assert error.startswith("CheckpointError: ") and "\n" not in error
    assert f"{name}/{missing}: missing" in error
    code, _, err = _verify(damaged["copies"][name], capsys)
    assert code == 2 and f"{name}/{missing}: missing" in err


def test_a_truncated_distcp_without_recorded_hashes_is_one_line_not_an_eof_error(damaged, capsys):
    error = damaged["loads"]["old_truncated"]
    assert error.startswith("CheckpointError: ") and "EOFError" not in error
    assert "old_truncated/__0_0.distcp: truncated at " in error
    assert "the bytes of output_layer.weight onwards are missing" in error
    code, _, err = _verify(damaged["copies"]["old_truncated"], capsys)
    assert code == 2 and "truncated at" in err


def test_verify_reads_an_untouched_checkpoint_once(damaged, monkeypatch):
    """The second check finds every digest in the cache: no file is read again."""
    from megatron_scir import hashing
    from megatron_scir.checkpoint import check_checkpoint

    good = damaged["good"]
    check_checkpoint(good)
    hashing._memory.clear()  # a new process: only the cache file is left
    reads = []
    real = hashing._stream_sha256
    monkeypatch.setattr(hashing, "_stream_sha256", lambda p: reads.append(p) or real(p))
    check_checkpoint(good)
    assert reads == []
    (good / "hf" / "tiny_sp_256.model").touch()  # touched: read again, still the same content
    assert check_checkpoint(good).ok and [p.name for p in reads] == ["tiny_sp_256.model"]


def _as_another_user(fn) -> tuple[int, str]:
    """``fn()`` (an exit code) in a forked child that cannot read what this user's mode bits
    deny it (root bypasses them: the child drops to ``nobody``); returns (code, stderr)."""
    import os
    import tempfile

    err = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.dup2(err.fileno(), 2)
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 -- pytest's capture is not fd 2
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            code = fn()
        except BaseException:  # noqa: BLE001 -- reported to the parent on stderr
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    err.seek(0)
    return os.waitstatus_to_exitcode(status), err.read().decode()


def test_a_checkpoint_folder_without_permission_is_one_line(damaged):
    import os
    import tempfile

    # imported before the fork: the other user may not be able to read this environment
    import megatron_scir.recipe.jobs  # noqa: F401

    # /tmp itself: pytest's own folders are closed to other users
    shared = Path(tempfile.mkdtemp(prefix="scir-perm-", dir="/tmp"))
    try:
        os.chmod(shared, 0o755)  # reachable by the other user; the checkpoint itself is not
        ckpt = shared / "ckpt"
        shutil.copytree(damaged["good"], ckpt)
        os.chmod(ckpt, 0o000)
        prompts = shared / "p.jsonl"
        prompts.write_text('{"id": 1, "prompt": "hi"}\n')
        os.chmod(prompts, 0o644)
        expected = f"checkpoint {ckpt}: permission denied"
        code, err = _as_another_user(lambda: scir_main(["verify", str(ckpt)]))
        assert code == 2 and err.count("\n") == 1 and f"scir verify: error: {expected}" in err
        generate = ["generate", "--ckpt", str(ckpt), "--prompts", str(prompts), "--out"]
        code, err = _as_another_user(lambda: scir_main([*generate, str(shared / "g.jsonl")]))
        assert code == 2 and "Traceback" not in err, err[-3000:]
        assert f"scir generate: error: {expected}" in err
    finally:
        os.chmod(shared / "ckpt", 0o755)
        shutil.rmtree(shared)
