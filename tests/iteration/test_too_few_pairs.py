"""An iteration whose pairs do not fill one global batch completes (``iteration.too_few_pairs``).

Tiny model, one process, the arithmetic task: 2 prompts × 4 samples give at most 4 pairs for a
global batch of 8.

- ``error`` stops after the pairs stage, before the reference pass, with one line whose advice
  the rerun accepts (``iteration.too_few_pairs=repeat``), and that rerun completes: the pairs
  are repeated (seeded) up to one global batch and the metrics say so.
- Rerunning the stages after generation gives the same pairs file and the same weights, bit for
  bit (the resume of a repeated iteration is exact).
- ``skip`` completes the iteration without a reference pass or training: M_2 is M_1, recorded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_scir.tasks.arithmetic import write_task_files
from tests.iteration.test_iterate import overrides

RUN = (
    "iteration.seed_sft=false",
    "iteration.num_iterations=1",
    "iteration.prompts_per_iteration=2",
)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task_files(
        tmp_path_factory.mktemp("task"), num_sft=8, num_judge=8, num_prompts=8, max_operand=9
    )


def _iterate(task, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "megatron_scir.cli", "iterate", "--config", "tiny", "--no-progress",
        *overrides(task, run_dir, *RUN, *extra),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _marker(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "iter_1" / stage / "stage.json").read_text())


def _weights(checkpoint: str) -> dict[str, torch.Tensor]:
    from megatron_scir.checkpoint.layout import inspect_checkpoint, load_global_tensors

    contents = inspect_checkpoint(checkpoint)
    flat = [k for k in contents.tensors if not k.startswith("decoder.layers.")]
    stacked = [k for k in contents.tensors if k.startswith("decoder.layers.")]
    weights = load_global_tensors(contents, flat)
    for layer in range(contents.tensors[stacked[0]][0][0]):
        for key, value in load_global_tensors(contents, stacked, layer).items():
            weights[f"{key}@{layer}"] = value
    return weights


@pytest.fixture(scope="module")
def repeated(task, tmp_path_factory):
    """A run stopped by ``error`` and continued with the advised ``repeat``."""
    run_dir = tmp_path_factory.mktemp("repeated")
    stopped = _iterate(task, run_dir, "iteration.too_few_pairs=error")
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    done = _iterate(task, run_dir, "iteration.too_few_pairs=repeat")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir, stopped, done


def test_error_stops_before_the_reference_pass_with_advice_the_rerun_accepts(repeated):
    run_dir, stopped, done = repeated
    errors = [line for line in stopped.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert errors[0].startswith("scir iterate: error: iteration 1: ")
    assert "do not fill one global batch of train.global_batch_size=8" in errors[0]
    assert "iteration.too_few_pairs=repeat" in errors[0] and "iteration.run_dir" in errors[0]
    # the rerun with the advised setting was accepted (not refused as "other settings")
    assert "other settings" not in done.stderr
    assert "TRAINING SKIPPED" not in done.stderr and "too_few_pairs=repeat" in done.stderr


def test_pairs_that_do_not_fill_a_global_batch_are_repeated_up_to_one_and_trained_on(repeated):
    from megatron_scir.data import read_records

    run_dir, _, _ = repeated
    record = _metrics(run_dir)[1]
    available = record["pairs_available"]
    assert 1 <= available < 8 and record["pairs_repeated"] == 8 - available
    assert record["too_few_pairs"] == "repeat" and record["training_skipped"] == 0.0
    assert record["steps"] == 1.0 and record["loss_total"] == record["loss_total"]  # finite
    pairs, _ = read_records(run_dir / "iter_1" / "pairs" / "pairs.jsonl", "pairs")
    originals = {p.pair_id for p in pairs if "#" not in p.pair_id}
    assert len(pairs) == 8 and len(originals) == available
    assert {p.pair_id.split("#")[0] for p in pairs} == originals
    counts = [sum(p.pair_id.split("#")[0] == i for p in pairs) for i in originals]
    assert max(counts) - min(counts) <= 1  # no pair has two copies more than another
    reference, _ = read_records(run_dir / "iter_1" / "reference" / "pairs.ref.jsonl", "pairs")
    assert len(reference) == 8


def test_rerunning_a_repeated_iteration_gives_the_same_pairs_and_weights_bit_for_bit(
    repeated, task, tmp_path
):
    run_dir, _, _ = repeated
    rerun = tmp_path / "rerun"
    shutil.copytree(run_dir, rerun)
    for stage in ("pairs", "reference", "train"):  # as if killed after generation
        shutil.rmtree(rerun / "iter_1" / stage)
    done = _iterate(task, rerun, "iteration.too_few_pairs=repeat")
    assert done.returncode == 0, done.stderr[-3000:]
    name = "iter_1/pairs/pairs.jsonl"
    assert (rerun / name).read_bytes() == (run_dir / name).read_bytes()
    expected = _weights(_marker(run_dir, "train")["outputs"]["checkpoint"])
    got = _weights(_marker(rerun, "train")["outputs"]["checkpoint"])
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    timeless = [{k: v for k, v in r.items() if not k.startswith("wall_s")} for r in _metrics(rerun)]
    assert timeless == [
        {k: v for k, v in r.items() if not k.startswith("wall_s")} for r in _metrics(run_dir)
    ]


def test_skip_completes_the_iteration_without_training_and_says_so(repeated, task, tmp_path):
    run_dir, _, _ = repeated
    skipped = tmp_path / "skipped"
    for part in ("iter_0", "iter_1/generate"):  # the same M_1 and samples
        shutil.copytree(run_dir / part, skipped / part)
    done = _iterate(task, skipped, "iteration.too_few_pairs=skip")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TRAINING SKIPPED" in done.stderr
    record = _metrics(skipped)[1]
    assert record["too_few_pairs"] == "skip" and record["training_skipped"] == 1.0
    assert record["pairs_available"] == _metrics(run_dir)[1]["pairs_available"]
    assert record["pairs_repeated"] == 0.0 and record["steps"] == 0.0
    assert not (skipped / "iter_1" / "reference").exists()
    init = json.loads((skipped / "iter_0" / "init" / "stage.json").read_text())
    # M_2 is M_1, the model iteration 1 sampled from
    assert _marker(skipped, "train")["outputs"]["checkpoint"] == init["outputs"]["checkpoint"]
