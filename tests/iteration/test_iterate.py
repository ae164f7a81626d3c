"""``scir iterate`` end to end on the arithmetic task (tiny model, CPU, gloo).

- A run SIGKILLed during generation, then during the reference pass, then during training, and
  rerun each time, ends with the weights of an uninterrupted run, bit for bit.
- Rerunning with a setting that would invalidate finished stages is refused with the keys.
- One iteration completes at TP=2 and at PP=2 (2 processes, NCCL's contiguity rule enforced);
  the SCIR (TP, with the Hugging Face export) and SRLM (PP) modes, with the held-out evaluation.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megatron_scir.tasks.arithmetic import PAIRWISE_JUDGE_TEMPLATE
from megatron_scir.testing.distributed import run_distributed

BASE = [
    "data.max_prompt_length=24",
    # 6 sampled tokens re-encode to more when the random model samples <unk> (" ⁇ ": 5 pieces)
    "data.max_response_length=12",
    "data.judge_max_length=64",
    "generation.max_new_tokens=6",
    "generation.temperature=1.0",
    "generation.max_batch_size=8",
    "generation.chunk_size=8",
    "train.micro_batch_size=4",
    "train.global_batch_size=8",
    "train.lr=1e-3",
    "train.sft_epochs=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    f"judge.pairwise_template={PAIRWISE_JUDGE_TEMPLATE}",
]


def overrides(task, run_dir: Path, *extra: str) -> list[str]:
    return [
        *BASE,
        f"data.tokenizer_path={task.tokenizer}",
        f"data.prompts={task.prompts}",
        f"data.seed_sft={task.seed_sft}",
        f"data.seed_judge={task.seed_judge}",
        f"iteration.run_dir={run_dir}",
        *extra,
    ]


# ------------------------------------------------------------------ kills and reruns (1 process)

KILL_RUN = ("iteration.seed_sft=false", "iteration.num_iterations=1",
            "iteration.prompts_per_iteration=48", "checkpoint.save_interval=2")


def _command(task, run_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "megatron_scir.cli", "iterate", "--config", "tiny", "--no-progress",
        *overrides(task, run_dir, *KILL_RUN),
    ]


def _run(cmd) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _kill_when(cmd, ready, what: str) -> None:
    """Start ``cmd``; SIGKILL it (its process group: the checkpoint writer's Manager process
    too, as Slurm or a terminal would) as soon as ``ready()`` holds."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, f"finished before {what}: " + proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"never reached {what}"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _stage(run_dir: Path, name: str) -> Path:
    return run_dir / "iter_1" / name


def _done(run_dir: Path, name: str) -> bool:
    return (_stage(run_dir, name) / "stage.json").is_file()


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from megatron_scir.checkpoint.layout import inspect_checkpoint, load_global_tensors

    marker = json.loads((_stage(run_dir, "train") / "stage.json").read_text())
    contents = inspect_checkpoint(marker["outputs"]["checkpoint"])
    flat = [k for k in contents.tensors if not k.startswith("decoder.layers.")]
    stacked = [k for k in contents.tensors if k.startswith("decoder.layers.")]
    weights = load_global_tensors(contents, flat)
    for layer in range(contents.tensors[stacked[0]][0][0]):
        for key, value in load_global_tensors(contents, stacked, layer).items():
            weights[f"{key}@{layer}"] = value
    return weights


def _records(path: Path, kind: str):
    from megatron_scir.data import read_records

    return read_records(path, kind)[0]


@pytest.fixture(scope="module")
def uninterrupted(task, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    _run(_command(task, run_dir))
    return run_dir


def test_sigkill_in_generation_reference_and_training_then_rerun_equals_an_uninterrupted_run(
    task, uninterrupted, tmp_path
):
    reference_run, killed_run = uninterrupted, tmp_path / "killed"
    cmd = _command(task, killed_run)

    def generating() -> bool:
        stream = _stage(killed_run, "generate") / "generations.jsonl"
        return stream.is_file() and b'"__commit__"' in stream.read_bytes()

    _kill_when(cmd, generating, "a committed generation chunk")
    assert not _done(killed_run, "generate")
    _kill_when(cmd, lambda: _stage(killed_run, "reference").is_dir(), "the reference pass")
    assert _done(killed_run, "pairs") and not _done(killed_run, "reference")
    step = _stage(killed_run, "train") / "checkpoints" / "step_0000002" / "scir_checkpoint.json"
    _kill_when(cmd, step.is_file, "the second training step's checkpoint")
    assert not _done(killed_run, "train")
    _run(cmd)

    outputs = {"generate/generations.jsonl": "generations", "pairs/pairs.jsonl": "pairs"}
    for name, kind in outputs.items():
        a = _records(reference_run / "iter_1" / name, kind)
        b = _records(killed_run / "iter_1" / name, kind)
        assert [_fields(r) for r in a] == [_fields(r) for r in b], name
    expected, got = _final_weights(reference_run), _final_weights(killed_run)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    metrics = [json.loads(line) for line in (killed_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1]
    # the resume used step 2's optimizer state; the finished stage keeps the weights only (the
    # next iteration starts a fresh optimizer)
    from megatron_scir.checkpoint import read_metadata

    marker = json.loads((_stage(killed_run, "train") / "stage.json").read_text())
    checkpoints = _stage(killed_run, "train") / "checkpoints"
    assert "optimizer" in read_metadata(checkpoints / "step_0000002").contents
    assert "optimizer" not in read_metadata(marker["outputs"]["checkpoint"]).contents

    changed = subprocess.run(
        [*cmd, "scir.beta=0.3"], capture_output=True, text=True, timeout=300
    )
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "scir.beta: 0.1 -> 0.3" in changed.stderr and "iter_1/train" in changed.stderr


def test_sigusr1_in_generation_stops_after_a_chunk_exits_75_and_the_rerun_continues(
    task, uninterrupted, tmp_path
):
    from megatron_scir.training.signals import EXIT_PREEMPTED

    run_dir = tmp_path / "signalled"
    cmd = _command(task, run_dir)
    stream = _stage(run_dir, "generate") / "generations.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (stream.is_file() and b'"__commit__"' in stream.read_bytes()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "generation stopped by SIGUSR1 after a chunk" in out
    assert json.loads((run_dir / "preempted.json").read_text())["message"].startswith(
        "iteration 1: generation stopped"
    )
    assert not _done(run_dir, "generate")
    committed = stream.read_bytes().count(b'"__commit__"')
    assert 1 <= committed < 6  # 48 prompts in chunks of 8: it stopped early
    _run(cmd)
    assert not (run_dir / "preempted.json").exists()
    name = "generate/generations.jsonl"
    a = _records(uninterrupted / "iter_1" / name, "generations")
    b = _records(run_dir / "iter_1" / name, "generations")
    assert [_fields(r) for r in a] == [_fields(r) for r in b]
    assert _done(run_dir, "train")


def _fields(record) -> tuple:
    """A record's fields without ``where`` (the file path differs between the two runs)."""
    return tuple(getattr(record, name) for name in record.__slots__ if name != "where")


# ------------------------------------------------------------------ TP=2 and PP=2 (2 processes)


def _iterate_rank(rank, world_size, args):
    from megatron_scir.iteration.job import iterate

    return iterate("tiny", args, progress=False)


@pytest.mark.dist
@pytest.mark.parametrize(
    ("layout", "mode"),
    [
        (
            (
                "parallel.tensor_model_parallel_size=2",
                "parallel.sequence_parallel=true",
                "checkpoint.export_hf=true",
            ),
            "scir",
        ),
        (("parallel.pipeline_model_parallel_size=2",), "srlm"),
    ],
    ids=["tp2_sp_scir", "pp2_srlm"],
)
def test_one_iteration_completes_under_model_parallelism(task, tmp_path, layout, mode):
    args = overrides(
        task,
        tmp_path / "run",
        *layout,
        f"scir.mode={mode}",
        "iteration.num_iterations=1",
        "iteration.prompts_per_iteration=16",
        f"iteration.eval_pairs={task.eval_pairs}",
        f"iteration.eval_prompts={task.eval_prompts}",
        "iteration.grader=megatron_scir.tasks.arithmetic:grade",
    )
    records = run_distributed(_iterate_rank, world_size=2, args=(args,), timeout=900)
    timeless = [[{k: v for k, v in r.items() if not k.startswith("wall_s")} for r in rank]
                for rank in records]
    assert timeless[0] == timeless[1]  # every rank returns the same records (but its timings)
    start, first = records[0]
    for key in ("oracle_accuracy", "judge_accuracy"):
        assert 0.0 <= start[key] <= 1.0 and 0.0 <= first[key] <= 1.0
    for key in ("implicit_accuracy", "consistency_rate", "loss_total", "pairs_built"):
        assert math.isfinite(first[key]), key
    assert (tmp_path / "run" / "iterations.png").is_file()
    if "checkpoint.export_hf=true" in layout:  # M_2 in Hugging Face format
        hf = tmp_path / "run" / "iter_1" / "export" / "hf"
        assert json.loads((hf / "config.json").read_text())["num_hidden_layers"] == 2


# ------------------------------------------------------------------ M_0 from Hugging Face


def test_iterate_starts_from_a_hugging_face_folder_and_keeps_its_weights(task, tmp_path):
    from safetensors.torch import load_file

    from megatron_scir.convert import export_to_hf
    from megatron_scir.hashing import content_fingerprint
    from megatron_scir.testing.hf import tiny_hf_llama

    tiny_hf_llama(tmp_path / "hf")
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "megatron_scir.cli", "iterate", "--config", "tiny", "--no-progress",
        "--hf-dir", str(tmp_path / "hf"),
        *overrides(task, run_dir, "iteration.seed_sft=false", "iteration.num_iterations=0"),
    ]
    _run(cmd)
    marker = json.loads((run_dir / "iter_0" / "init" / "stage.json").read_text())
    # the source is known by its folder and its content (megatron_scir.hashing)
    fingerprint = content_fingerprint(tmp_path / "hf")
    assert marker["config"]["source"] == f"hf:{(tmp_path / 'hf').resolve()}|{fingerprint}"
    export_to_hf(marker["outputs"]["checkpoint"], tmp_path / "back", progress=False)
    original = load_file(next((tmp_path / "hf").glob("*.safetensors")))
    back = load_file(next((tmp_path / "back").glob("*.safetensors")))
    assert original.keys() == back.keys()
    for key, value in original.items():
        assert torch.equal(back[key], value), key
