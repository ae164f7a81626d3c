"""``scir iterate`` knows its input files by content: a prompts or tokenizer file edited in
place after stages finished is refused with what changed (no stale results), and the same
content again continues the run.

One real ``scir iterate`` (tiny preset, CPU, one iteration) makes the run directory; the reruns
are the same command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_scir.tasks.arithmetic import PAIRWISE_JUDGE_TEMPLATE, write_task_files

BASE = [
    "data.max_prompt_length=24",
    "data.max_response_length=12",
    "data.judge_max_length=64",
    "generation.max_new_tokens=6",
    "generation.temperature=1.0",
    "generation.max_batch_size=8",
    "generation.chunk_size=8",
    "train.micro_batch_size=4",
    "train.global_batch_size=8",
    "train.lr=1e-3",
    "logging.progress=false",
    "logging.tensorboard=false",
    "iteration.seed_sft=false",
    "iteration.num_iterations=1",
    "iteration.prompts_per_iteration=16",
    f"judge.pairwise_template={PAIRWISE_JUDGE_TEMPLATE}",
]


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIR_HASH_CACHE", str(tmp_path / "hashes.json"))


def _iterate(task, run_dir: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "megatron_scir.cli", "iterate", "--config", "tiny"]
    cmd += ["--no-progress", *BASE, f"data.tokenizer_path={task.tokenizer}"]
    cmd += [f"data.prompts={task.prompts}", f"iteration.run_dir={run_dir}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_input_files_edited_in_place_are_refused_and_the_same_content_continues(tmp_path):
    from megatron_scir.testing.tokenizers import train_tiny_sentencepiece

    task = write_task_files(
        tmp_path / "task", num_sft=8, num_judge=8, num_prompts=32, max_operand=9
    )
    run_dir = tmp_path / "run"
    first = _iterate(task, run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run_dir / "iter_1" / "train" / "stage.json").is_file()

    prompts = task.prompts.read_bytes()
    lines = prompts.decode().splitlines(keepends=True)
    record = json.loads(lines[0])  # one digit of the first prompt changed: same length
    digit = next(i for i, c in enumerate(record["prompt"]) if c.isdigit())
    text = record["prompt"]
    record["prompt"] = text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1 :]
    task.prompts.write_bytes("".join([json.dumps(record) + "\n", *lines[1:]]).encode())
    edited = _iterate(task, run_dir)
    errors = [line for line in edited.stderr.splitlines() if "error:" in line]
    assert edited.returncode == 2 and errors, edited.stderr[-3000:]
    assert "was finished with other settings" in errors[0]
    assert "data.prompts#content: 'sha256:" in edited.stderr
    assert "Traceback" not in edited.stderr

    task.prompts.write_bytes(prompts)  # the same content again (a new mtime): the run continues
    tokenizer = task.tokenizer.read_bytes()  # another 256-piece tokenizer over it
    task.tokenizer.write_bytes(train_tiny_sentencepiece(tmp_path / "other").read_bytes())
    other_tokenizer = _iterate(task, run_dir)
    assert other_tokenizer.returncode == 2
    assert "data.tokenizer_path#content: 'sha256:" in other_tokenizer.stderr

    task.tokenizer.write_bytes(tokenizer)
    again = _iterate(task, run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
