"""``scir generate`` as a real process: killed mid-run and restarted, and under torchrun.

The generator runs as a real subprocess (``python -m megatron_scir.cli generate``) from a
distributed checkpoint of a random tiny model, with a SentencePiece model trained here. The test
sends SIGKILL as soon as one chunk is committed, checks that chunks were still missing, and
restarts the same command. (That a resumed file equals an uninterrupted run's is shown in
test_sampling.py without the two extra process start-ups.) Under torchrun with TP=2 only global
rank 0 writes and prints the summary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megatron_scir.data import read_records
from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist

NUM_PROMPTS, NUM_RESPONSES, CHUNK = 24, 2, 2
OVERRIDES = [
    f"generation.num_responses={NUM_RESPONSES}",
    f"generation.chunk_size={CHUNK}",
    "generation.max_new_tokens=16",
    "generation.temperature=1.0",
    "data.max_truncated_fraction=1.0",  # the prompts take 36 tokens: cut to the tiny 32
]


def _save_random_checkpoint(rank, world_size, ckpt_dir):
    from megatron_scir.checkpoint import save_checkpoint
    from megatron_scir.config import load_config
    from megatron_scir.models import build_gpt_model
    from megatron_scir.parallel.state import initialize_model_parallel

    cfg = load_config("tiny", [])
    initialize_model_parallel(cfg.parallel)
    torch.manual_seed(11)
    save_checkpoint(ckpt_dir, [build_gpt_model(cfg)], cfg, iteration=0, step=0)


@pytest.fixture(scope="module")
def command(sp_model_path, tmp_path_factory):
    """``command(out)``: the generate command line writing to ``out``."""
    root = tmp_path_factory.mktemp("kill")
    ckpt = root / "ckpt"
    run_distributed(_save_random_checkpoint, 1, args=(str(ckpt),))
    prompts = root / "prompts.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"Tell me fact number {i} about the sea."} for i in range(24)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def make(out: Path, launcher: tuple[str, ...] = (sys.executable,)) -> list[str]:
        return [
            *launcher,
            "-m",
            "megatron_scir.cli",
            "generate",
            "--config",
            "tiny",
            "--ckpt",
            str(ckpt),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--no-progress",
            f"data.tokenizer_path={sp_model_path}",
            *OVERRIDES,
        ]

    return make


def _num_committed(path: Path) -> int:
    return len(read_records(path, "generations")[0]) if path.exists() else 0


def _kill_after_first_chunk(cmd: list[str], out: Path) -> int:
    """Start ``cmd``, SIGKILL it once a chunk is committed; returns the prompts committed then."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while _num_committed(out) == 0:
            assert proc.poll() is None, f"generate exited early: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no chunk committed within 240 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return _num_committed(out)


def test_a_killed_run_restarted_has_every_prompt_exactly_once_with_n_responses(command, tmp_path):
    out = tmp_path / "generations.jsonl"
    committed = _kill_after_first_chunk(command(out), out)
    assert 0 < committed < NUM_PROMPTS, committed  # killed with chunks committed and missing

    restart = subprocess.run(command(out), capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr
    assert f"{committed} done before" in restart.stdout
    records = read_records(out, "generations")[0]
    assert sorted(r.prompt_id for r in records) == sorted(f"q{i}" for i in range(NUM_PROMPTS))
    assert all(len(r.responses) == NUM_RESPONSES == len(r.truncated) for r in records)


def test_under_torchrun_with_tp2_one_rank_writes_and_prints_the_summary(command, tmp_path):
    out = tmp_path / "tp2.jsonl"
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2")
    cmd = [*command(out, torchrun), "parallel.tensor_model_parallel_size=2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("generation: ") == 1, done.stdout
    assert f"{NUM_PROMPTS} prompts answered" in done.stdout
    records = read_records(out, "generations")[0]
    assert [r.prompt_id for r in records] == [f"q{i}" for i in range(NUM_PROMPTS)]
