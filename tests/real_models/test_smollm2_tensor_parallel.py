"""SmolLM2-135M-Instruct sampled greedily under tensor parallelism gives the one-process answers.

SmolLM2 has 9 attention heads and 3 KV groups, so its smallest tensor-parallel layout is TP=3
(TP=2 is refused naming the heads). The real ``scir generate`` runs once in one process and once
under ``torchrun --nproc-per-node 3`` (gloo) from the same converted checkpoint; every response and
its ``truncated`` flag must be equal (test_smollm2.py shows the one-process answers are
transformers'). No ``--config``: the converted checkpoint carries SmolLM2's tokenizer, so both
runs use the ``chat`` preset's budgets, and the layout is checked against the checkpoint's model.
About 1.5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_scir.data import read_records
from tests.real_models.test_smollm2 import MAX_NEW_TOKENS, PROMPTS

pytestmark = pytest.mark.real_model

SETTINGS = [
    "--no-progress",
    *("generation.temperature=0", "generation.num_responses=1", "generation.max_batch_size=16"),
    f"generation.max_new_tokens={MAX_NEW_TOKENS}",
]


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{what} failed:\n{output}"


def test_greedy_answers_at_tp3_equal_one_process(smollm2_dir, tmp_path):
    ckpt, prompts = tmp_path / "ckpt", tmp_path / "prompts.jsonl"
    lines = (json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(PROMPTS))
    prompts.write_text("".join(lines))
    scir = [sys.executable, "-m", "megatron_scir.cli"]
    convert = ["convert", "hf-to-mcore", "--hf-dir", str(smollm2_dir)]
    _run([*scir, *convert, "--out", str(ckpt), "--no-progress"], "scir convert hf-to-mcore")
    generate = ["generate", "--ckpt", str(ckpt), "--prompts", str(prompts)]
    one, three = tmp_path / "tp1.jsonl", tmp_path / "tp3.jsonl"
    _run([*scir, *generate, "--out", str(one), *SETTINGS], "scir generate (one process)")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3"]
    _run(
        [*torchrun, "-m", "megatron_scir.cli", *generate, "--out", str(three), *SETTINGS]
        + ["parallel.tensor_model_parallel_size=3"],
        "scir generate (TP=3)",
    )

    def answers(path: Path) -> list[tuple]:
        records, _ = read_records(path, "generations")
        return [(r.prompt_id, r.responses, r.truncated) for r in records]

    expected = answers(one)
    assert len(expected) == len(PROMPTS)
    assert answers(three) == expected
