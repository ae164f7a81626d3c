"""``scir evaluate`` never reports a stale accuracy and fails early, in one line.

- The work files are a cache keyed by content: a tokenizer file or ``__0_0.distcp`` replaced in
  place recomputes them (the result equals a fresh run's); in a checkpoint that records its
  files' hashes, overwritten weights are refused as damaged.
- Each checkpoint of a folder gets its own default work folder (``<ckpt>/../eval/<name>``).
- A work folder that cannot be made is refused before any model loads; a disk that fills up
  during the pass is one line, and nothing is left under a work file's final name.

The models are random tiny checkpoints (one gloo process saves them); every command is the real
``scir evaluate`` in a subprocess.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_scir.tasks.arithmetic import PAIRWISE_JUDGE_TEMPLATE, write_task_files
from megatron_scir.testing.distributed import run_distributed

OVERRIDES = [
    "data.max_prompt_length=24",
    "data.max_response_length=8",
    "data.judge_max_length=64",
    "model.init_method_std=0.5",  # random models with opinions: P_G far from ½
    f"judge.pairwise_template={PAIRWISE_JUDGE_TEMPLATE}",
]


def _save(rank, world_size, root, overrides):
    from megatron_scir.checkpoint import save_checkpoint
    from megatron_scir.config import load_config
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.runtime import parallel_world

    cfg = load_config("tiny", overrides)
    with parallel_world(cfg.parallel) as runtime:
        for seed in (1, 2):
            runtime.reseed(seed)
            save_checkpoint(
                f"{root}/models/m{seed}", build_model_chunks(cfg), cfg, iteration=0, step=0
            )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_inputs")
    task = write_task_files(root / "task", num_sft=8, num_judge=8, num_prompts=8)
    tokenizer = root / "tokenizer.model"
    shutil.copy(task.tokenizer, tokenizer)
    pairs = root / "pairs.jsonl"
    pairs.write_text("\n".join(task.eval_pairs.read_text().splitlines()[:16]) + "\n")
    overrides = [*OVERRIDES, f"data.tokenizer_path={tokenizer}"]
    run_distributed(_save, 1, args=(str(root), overrides))
    return {"root": root, "pairs": pairs, "tokenizer": tokenizer, "overrides": overrides}


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIR_HASH_CACHE", str(tmp_path / "hashes.json"))


def _evaluate(setup, ckpt, *extra, preexec=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "megatron_scir.cli", "evaluate", "--config", "tiny"]
    cmd += ["--ckpt", str(ckpt), "--pairs", str(setup["pairs"]), "--no-progress"]
    return subprocess.run(
        [*cmd, *setup["overrides"], *extra], capture_output=True, text=True, timeout=300,
        preexec_fn=preexec,
    )


def _report(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{"):])


def _error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return lines[0]


SCORES = ("judge_accuracy", "judge_accuracy_first_shown", "judge_accuracy_second_shown")


def _scores(report: dict) -> tuple:
    return tuple(report[k] for k in SCORES)


def _legacy_copy(src: Path, dst: Path) -> Path:
    """``src`` as a checkpoint written before hashes were recorded (nothing to check it by)."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "scir_checkpoint.json").read_text())
    meta.pop("files", None)
    meta.pop("tokenizer", None)
    (dst / "scir_checkpoint.json").write_text(json.dumps(meta))
    return dst


def test_each_checkpoint_of_a_folder_has_its_own_default_work_folder(setup):
    models = setup["root"] / "models"
    _report(_evaluate(setup, models / "m1"))
    _report(_evaluate(setup, models / "m2"))
    for name in ("m1", "m2"):
        assert (models / "eval" / name / "policy.jsonl").is_file()
    assert not (models / "eval" / "policy.jsonl").exists()


def test_a_tokenizer_replaced_in_place_recomputes_the_cached_pass(setup, tmp_path):
    from megatron_scir.testing.tokenizers import train_tiny_sentencepiece

    ckpt = _legacy_copy(setup["root"] / "models" / "m1", tmp_path / "m1")
    tokenizer = tmp_path / "tokenizer.model"
    shutil.copy(setup["tokenizer"], tokenizer)
    setup = {**setup, "overrides": [*OVERRIDES, f"data.tokenizer_path={tokenizer}"]}
    before = _report(_evaluate(setup, ckpt))
    # another 256-piece tokenizer, written over the same path
    tokenizer.write_bytes(train_tiny_sentencepiece(tmp_path / "other").read_bytes())
    rerun = _evaluate(setup, ckpt)
    fresh = _evaluate(setup, ckpt, "--out-dir", str(tmp_path / "fresh"))
    assert "inputs changed" in rerun.stderr and "recomputing" in rerun.stderr
    assert _scores(_report(rerun)) == _scores(_report(fresh))
    assert _scores(_report(rerun)) != _scores(before)


def test_weights_replaced_in_place_recompute_or_are_refused(setup, tmp_path):
    models = setup["root"] / "models"
    # a checkpoint without recorded hashes: recomputed, as a fresh run
    ckpt = _legacy_copy(models / "m1", tmp_path / "m1")
    before = _report(_evaluate(setup, ckpt))
    shutil.copy(models / "m2" / "__0_0.distcp", ckpt / "__0_0.distcp")
    rerun = _evaluate(setup, ckpt)
    fresh = _evaluate(setup, ckpt, "--out-dir", str(tmp_path / "fresh"))
    assert _scores(_report(rerun)) == _scores(_report(fresh)) != _scores(before)
    # a checkpoint that records them: its weights no longer match, refused in one line
    hashed = tmp_path / "hashed"
    shutil.copytree(models / "m1", hashed)
    shutil.copy(models / "m2" / "__0_0.distcp", hashed / "__0_0.distcp")
    line = _error_line(_evaluate(setup, hashed))
    assert f"checkpoint {hashed} is damaged: {hashed}/__0_0.distcp: content differs" in line


def test_an_unusable_default_work_folder_is_refused_before_any_model_loads(setup, tmp_path):
    parent = tmp_path / "ckpts"
    parent.mkdir()
    shutil.copytree(setup["root"] / "models" / "m1", parent / "m1")
    (parent / "eval").write_text("")  # a file where the work folder would go
    done = _evaluate(setup, parent / "m1")
    line = _error_line(done)
    assert f"{parent}/eval/m1: cannot write the evaluation's work files there" in line
    assert "--out-dir" in line and "reference pass" not in done.stderr


def _limit_file_size(limit: int):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def test_a_full_disk_during_the_pass_is_one_line_and_leaves_no_work_file(setup, tmp_path):
    """RLIMIT_FSIZE stands for a full disk: the kernel refuses the write (EFBIG, as ENOSPC)."""
    work = tmp_path / "work"
    done = _evaluate(setup, setup["root"] / "models" / "m1", "--out-dir", str(work),
                     preexec=_limit_file_size(2000))
    line = _error_line(done)
    assert f"{work}/policy.jsonl: cannot write the evaluation's work file (File too large)" in line
    assert not (work / "policy.jsonl").exists()
