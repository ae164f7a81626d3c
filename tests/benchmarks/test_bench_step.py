"""benchmarks/bench_step.py: the step benchmark runs, prints its tables and its losses agree."""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest
import torch

SCRIPT = pathlib.Path(__file__).parents[2] / "benchmarks" / "bench_step.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses resolve annotations through it
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


@pytest.mark.dist
def test_tiny_step_benchmark_prints_every_mode_and_agrees_with_hf_on_the_loss():
    command = [sys.executable, str(SCRIPT), "--shape", "tiny", "--steps", "1", "--warmup", "0"]
    command += ["--policy-length", "32", "--judge-length", "64"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "| mode | M × B × S | implementation | tokens processed | real tokens | s/step |" in out
    for mode, shape in (("scir", "1 × 8 × 64"), ("dpo", "1 × 4 × 32"), ("sft", "1 × 4 × 32")):
        for name in ("megatron-scir", "HF", "HF per kind"):
            assert f"| {mode} | {shape} | {name} |" in out, (mode, name)
        assert f"| {mode} | | **megatron-scir / HF** |" in out, mode
        assert f"| {mode} | | **megatron-scir / HF per kind** |" in out, mode
        # the per-kind peer pads each kind to its longest row: fewer tokens than B × S
        row = re.search(rf"\| {mode} \| {shape} \| HF per kind \| ([\d,]+) \(", out)
        rows, seq = map(int, shape.split(" × ")[1:])
        assert row is not None and int(row.group(1).replace(",", "")) < rows * seq, out
    worst = re.search(r"max abs loss difference .*: (\S+)", out)
    assert worst is not None, out
    assert float(worst.group(1)) <= 1e-4


def test_cpu_peak_tracker_counts_new_storages_once_and_releases_freed_ones():
    tracker_class = _load_script()._NewTensorBytes
    weight = torch.zeros(1000, 250)  # 1 MB that existed before: never counted
    tracker = tracker_class()
    with tracker:
        x = torch.ones(1000, 250)  # +1 MB
        view = x.t()  # a view: same storage
        x.add_(1.0)  # in place: same storage
        weight.add_(view.t())  # in place on an old tensor
        y = x * 2.0  # +1 MB
        assert tracker.live == 2_000_000
        del y, view
        assert tracker.live == 1_000_000
        z = (x + 1.0) * 3.0  # the temporary of x + 1 and z overlap: +2 MB at the peak
        del x, z
    assert tracker.peak == 3_000_000
    assert tracker.live == 0
