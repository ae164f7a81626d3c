"""A checkpoint carries its reading instructions: the tokenizer's fingerprint, and once trained
the chat and judge format it was trained with.

- ``scir evaluate --config tiny`` on a checkpoint trained with another judge template reads it
  with the checkpoint's template (and says so), exactly as when the template is passed
  explicitly; an explicit override wins and is reported.
- A tokenizer other than the checkpoint's is refused with both fingerprints, before any model
  loads.
- A checkpoint before its first optimizer step (converted, initialised) prescribes nothing.

The checkpoint is a real tiny model saved at step 1 by one gloo process; the commands are the
real ``scir`` in subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from megatron_scir.tasks.arithmetic import PAIRWISE_JUDGE_TEMPLATE, write_task_files
from megatron_scir.testing.distributed import run_distributed

TRAINED = [f"judge.pairwise_template={PAIRWISE_JUDGE_TEMPLATE}", "model.init_method_std=0.5"]


def _save(rank, world_size, root, tokenizer):
    from megatron_scir.checkpoint import save_checkpoint
    from megatron_scir.config import load_config
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.runtime import parallel_world

    cfg = load_config("tiny", [*TRAINED, f"data.tokenizer_path={tokenizer}"])
    with parallel_world(cfg.parallel) as runtime:
        runtime.reseed(1)
        chunks = build_model_chunks(cfg)
        save_checkpoint(f"{root}/trained", chunks, cfg, iteration=1, step=1)
        save_checkpoint(f"{root}/initial", chunks, cfg, iteration=0, step=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reading")
    task = write_task_files(root / "task", num_sft=8, num_judge=8, num_prompts=8)
    pairs = root / "pairs.jsonl"
    pairs.write_text("\n".join(task.eval_pairs.read_text().splitlines()[:16]) + "\n")
    run_distributed(_save, 1, args=(str(root), str(task.tokenizer)))
    return {"root": root, "pairs": pairs, "task": task}


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIR_HASH_CACHE", str(tmp_path / "hashes.json"))


def _scir(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "megatron_scir.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _evaluate(setup, tmp_path, name, *overrides):
    done = _scir(
        "evaluate", "--config", "tiny", "--ckpt", str(setup["root"] / name), "--pairs",
        str(setup["pairs"]), "--out-dir", str(tmp_path / f"work{len(overrides)}"),
        "--no-progress", f"data.tokenizer_path={setup['task'].tokenizer}",
        "model.init_method_std=0.5", *overrides,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    scores = {k: v for k, v in report.items() if k.startswith("judge_accuracy")}
    return scores, done.stderr


def test_evaluate_reads_a_trained_checkpoint_with_its_own_judge_template(setup, tmp_path):
    preset, said = _evaluate(setup, tmp_path, "trained")
    assert "judge.pairwise_template: using the checkpoint's" in said
    assert "was trained with it), not the config's" in said
    explicit, said = _evaluate(setup, tmp_path, "trained", TRAINED[0])
    assert explicit == preset and "using the checkpoint's" not in said


def test_an_explicit_override_wins_and_is_reported(setup, tmp_path):
    other = PAIRWISE_JUDGE_TEMPLATE.replace("Which", "So which")
    _, said = _evaluate(setup, tmp_path, "trained", f"judge.pairwise_template={other}")
    assert "judge.pairwise_template: judge.pairwise_template is set on the command line" in said


def test_an_untrained_checkpoint_prescribes_no_format(setup, tmp_path):
    _, said = _evaluate(setup, tmp_path, "initial")
    assert "using the checkpoint's" not in said


def test_a_tokenizer_other_than_the_checkpoints_is_refused_with_both_fingerprints(
    setup, tmp_path
):
    from megatron_scir.testing.tokenizers import train_tiny_sentencepiece

    other = train_tiny_sentencepiece(tmp_path)  # also 256 pieces: it would load, giving garbage
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": 1, "prompt": "1 + 2 ="}) + "\n")
    done = _scir(
        "generate", "--config", "tiny", "--ckpt", str(setup["root"] / "trained"), "--prompts",
        str(prompts), "--out", str(tmp_path / "g.jsonl"), "--no-progress",
        f"data.tokenizer_path={other}", "generation.max_new_tokens=2",
    )
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert f"tokenizer {other} (sha256:" in lines[0]
    assert f"is not the one checkpoint {setup['root'] / 'trained'} was saved with (sha256:" in (
        lines[0]
    )
    assert not (tmp_path / "g.jsonl").exists()
