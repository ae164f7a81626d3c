"""``scir generate`` never resumes into a file made by other inputs, and an output it cannot
write is one line naming it (exit 2), found before the model loads where it can be.

Two random tiny checkpoints of the same shape (one gloo process saves both) stand for two
models; every command is the real ``scir generate`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_scir.testing.distributed import run_distributed

GEN = ["generation.num_responses=2", "generation.max_new_tokens=4", "generation.chunk_size=2"]


def _save_two(rank, world_size, root, tokenizer):
    from megatron_scir.checkpoint import save_checkpoint
    from megatron_scir.config import load_config
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.runtime import parallel_world

    cfg = load_config("tiny", [f"data.tokenizer_path={tokenizer}"])
    with parallel_world(cfg.parallel) as runtime:
        for seed in (1, 2):
            runtime.reseed(seed)
            save_checkpoint(
                f"{root}/m{seed}", build_model_chunks(cfg), cfg, iteration=0, step=0,
                assets=[tokenizer],
            )


@pytest.fixture(scope="module")
def models(tmp_path_factory, sp_model_path):
    root = tmp_path_factory.mktemp("models")
    tokenizer = root / "tokenizer.model"  # the name a checkpoint's carried tokenizer is found by
    tokenizer.write_bytes(sp_model_path.read_bytes())
    run_distributed(_save_two, 1, args=(str(root), str(tokenizer)))
    return root


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIR_HASH_CACHE", str(tmp_path / "hashes.json"))


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": i, "prompt": f"Hi {i}"}) + "\n" for i in range(n)))
    return path


def _generate(ckpt, prompts, out, *overrides, preexec=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "megatron_scir.cli", "generate", "--config", "tiny"]
    cmd += ["--ckpt", str(ckpt), "--prompts", str(prompts), "--out", str(out), "--no-progress"]
    return subprocess.run(
        [*cmd, *GEN, *overrides], capture_output=True, text=True, timeout=300,
        preexec_fn=preexec,
    )


def _error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return lines[0]


def test_resuming_with_another_checkpoint_or_temperature_is_refused_naming_it(models, tmp_path):
    out = tmp_path / "g.jsonl"
    first = _generate(models / "m1", _prompts(tmp_path / "p2.jsonl", 2), out)
    assert first.returncode == 0, first.stderr[-3000:]
    written = out.read_bytes()
    more = _prompts(tmp_path / "p4.jsonl", 4)  # two new prompts: a resume would sample them

    other_model = _error_line(_generate(models / "m2", more, out))
    assert f"{out}: made with other inputs" in other_model
    assert "model: checkpoint:" in other_model and "/m1|" in other_model
    assert "/m2|" in other_model and "write to a new --out file" in other_model
    hotter = _generate(models / "m1", more, out, "generation.temperature=1.3")
    other_temperature = _error_line(hotter)
    assert "generation.temperature: 0.7 -> 1.3" in other_temperature
    assert f"loaded {models / 'm1'}" not in hotter.stderr  # refused before the model loads
    assert out.read_bytes() == written

    same = _generate(models / "m1", more, out)  # the same inputs continue the file
    assert same.returncode == 0, same.stderr[-3000:]
    assert "2 prompts answered" in same.stdout


def _limit_file_size(limit: int):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG, not death
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def test_a_full_disk_while_generating_is_one_line_and_the_rerun_continues(models, tmp_path):
    """RLIMIT_FSIZE: the kernel refuses a write past 1200 bytes (EFBIG) a few chunks in, as a
    full disk would (ENOSPC); both are the same OSError to the writer."""
    from megatron_scir.data import read_records

    out, prompts = tmp_path / "g.jsonl", _prompts(tmp_path / "p.jsonl", 16)
    done = _generate(models / "m1", prompts, out, preexec=_limit_file_size(1200))
    line = _error_line(done)
    assert f"scir generate: error: {out}: cannot write the generations (File too large)" in line
    kept = read_records(out, "generations")[0]
    assert 0 < len(kept) < 16 and len(kept) % 2 == 0  # whole chunks only
    again = _generate(models / "m1", prompts, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{16 - len(kept)} prompts answered" in again.stdout
    assert [r.prompt_id for r in read_records(out, "generations")[0]] == [str(i) for i in range(16)]


def test_an_output_that_cannot_be_created_is_refused_before_the_model_loads(models, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    done = _generate(models / "m1", _prompts(tmp_path / "p.jsonl", 2), blocker / "g.jsonl")
    line = _error_line(done)
    assert f"{blocker}" in line and "cannot write the generations" in line
    assert f"loaded {models / 'm1'}" not in done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="a small tmpfs needs root")
def test_a_full_tmpfs_while_generating_is_one_line(models, tmp_path):
    """The real thing where the test may mount it: ENOSPC from a 16 KiB tmpfs."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)]).returncode:
        pytest.skip("mount not permitted here")
    try:
        (mount / "filler").write_bytes(b"\0" * (16 * 1024 - 200))
    except OSError:
        pass
    try:
        done = _generate(models / "m1", _prompts(tmp_path / "p.jsonl", 4), mount / "g.jsonl")
        line = _error_line(done)
        assert "cannot write the generations (No space left on device)" in line
    finally:
        subprocess.run(["umount", str(mount)], check=True)
