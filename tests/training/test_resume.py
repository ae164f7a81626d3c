"""``scir train`` resumes exactly: a SIGKILLed run and a SIGTERMed run, resumed, end with the
weights of an uninterrupted run, bit for bit, and their metrics hold every step once."""

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

from megatron_scir.testing.tokenizers import train_tiny_sentencepiece
from tests.training.test_trainer import TRAIN, write_pairs

STEPS = 6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return train_tiny_sentencepiece(root), write_pairs(root / "pairs.jsonl")


def _command(inputs, save: Path) -> list[str]:
    sp_path, pairs = inputs
    overrides = [o for o in TRAIN if not o.startswith("train.train_iters")]
    return [
        sys.executable,
        "-m",
        "megatron_scir.cli",
        "train",
        "--pairs",
        str(pairs),
        "--resume",
        "--no-progress",
        *overrides,
        f"train.train_iters={STEPS}",
        f"data.tokenizer_path={sp_path}",
        f"checkpoint.save={save}",
        "checkpoint.save_interval=1",
        "checkpoint.keep_last=2",
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _interrupt(cmd: list[str], save: Path, *, after_step: int, sig: int) -> int:
    """Start ``cmd``, send ``sig`` once checkpoint ``after_step`` is complete; its exit status."""
    # its own session: a SIGKILL goes to the whole group, the checkpoint writer's Manager
    # process too, as Slurm or a terminal would kill it (else that process outlives the test)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    marker = save / f"step_{after_step:07d}" / "scir_checkpoint.json"
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    proc.wait(timeout=300)
    return proc.returncode


def _final_weights(save: Path) -> dict[str, torch.Tensor]:
    from megatron_scir.checkpoint.layout import inspect_checkpoint, load_global_tensors

    contents = inspect_checkpoint(save / f"step_{STEPS:07d}")
    flat = [k for k in contents.tensors if not k.startswith("decoder.layers.")]
    stacked = [k for k in contents.tensors if k.startswith("decoder.layers.")]
    weights = load_global_tensors(contents, flat)
    for layer in range(contents.tensors[stacked[0]][0][0]):  # stacked [L, ...] tensors
        for key, value in load_global_tensors(contents, stacked, layer).items():
            weights[f"{key}@{layer}"] = value
    return weights


def _steps(save: Path) -> list[int]:
    lines = (save / "logs" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory):
    save = tmp_path_factory.mktemp("uninterrupted")
    _run(_command(inputs, save))
    return _final_weights(save)


def _assert_same(weights, reference) -> None:
    assert weights.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(weights[key], value), key


def test_a_sigkilled_run_resumed_ends_bit_identical_with_every_step_logged_once(
    inputs, uninterrupted, tmp_path
):
    cmd = _command(inputs, tmp_path)
    status = _interrupt(cmd, tmp_path, after_step=3, sig=signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert not (tmp_path / f"step_{STEPS:07d}").exists()  # it really stopped early
    _run(cmd)
    _assert_same(_final_weights(tmp_path), uninterrupted)
    assert _steps(tmp_path) == list(range(1, STEPS + 1))
    kept = sorted(p.name for p in tmp_path.glob("step_*"))
    assert kept == [f"step_{STEPS - 1:07d}", f"step_{STEPS:07d}"]  # checkpoint.keep_last=2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_saves_a_complete_checkpoint_and_exits_75_then_resume_completes(
    inputs, uninterrupted, tmp_path, sig
):
    from megatron_scir.checkpoint import is_complete, latest_checkpoint, read_metadata
    from megatron_scir.training.signals import EXIT_PREEMPTED

    cmd = _command(inputs, tmp_path)
    assert _interrupt(cmd, tmp_path, after_step=2, sig=sig) == EXIT_PREEMPTED == 75
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and is_complete(latest)
    stopped_at = read_metadata(latest).step
    assert 2 <= stopped_at < STEPS
    assert _steps(tmp_path) == list(range(1, stopped_at + 1))
    _run(cmd)
    _assert_same(_final_weights(tmp_path), uninterrupted)
    assert _steps(tmp_path) == list(range(1, STEPS + 1))


def test_resume_without_a_checkpoint_starts_from_step_zero(inputs, tmp_path):
    done = _run(_command(inputs, tmp_path) + ["train.train_iters=1"])
    assert _steps(tmp_path) == [1] and "error" not in done.stderr.lower()
    assert "scir train: finished step 1 (0 skipped), last loss/total" in done.stdout


def test_training_without_checkpoint_save_is_refused_naming_the_key(inputs, tmp_path):
    cmd = [c for c in _command(inputs, tmp_path) if not c.startswith("checkpoint.save=")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 2
    assert "scir train: error: training needs checkpoint.save=DIR" in done.stderr


def test_train_on_pairs_without_reference_log_probs_runs_the_reference_pass_first(inputs, tmp_path):
    """The reference pass with M_t makes every pair a tie at the first step (SCIR_SPEC §4)."""
    sp_path, pairs = inputs
    bare = tmp_path / "bare.jsonl"
    rows = [json.loads(line) for line in Path(pairs).read_text().splitlines()]
    for row in rows:
        del row["ref_logps_1"], row["ref_logps_2"]
    bare.write_text("".join(json.dumps(row) + "\n" for row in rows))
    save = tmp_path / "run"
    cmd = _command((sp_path, bare), save) + ["train.train_iters=1"]
    assert "reference pass: 16 pairs" in _run(cmd).stdout
    assert (save / "pairs.ref.jsonl").is_file()
    first = json.loads((save / "logs" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["scir/ties"] == 1.0 and first["scir/consistency_rate"] == 0.0


def test_old_checkpoints_are_renamed_before_deletion_and_leftovers_are_swept(tmp_path):
    """A kill during ``keep_last`` cleanup must not leave a half-deleted ``step_*`` behind (it
    would no longer count as complete and never be removed): found by a loaded CI run."""
    from megatron_scir.checkpoint.locate import DIST_METADATA, METADATA_FILE
    from megatron_scir.training.trainer import _remove_old

    for step in (1, 2, 3):
        ckpt = tmp_path / f"step_{step:07d}"
        ckpt.mkdir()
        (ckpt / METADATA_FILE).write_text("{}")
        (ckpt / DIST_METADATA).write_text("{}")
    leftover = tmp_path / ".step_0000000.removing"  # what a kill mid-deletion leaves
    (leftover / "shard").mkdir(parents=True)
    _remove_old(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002", "step_0000003"]
