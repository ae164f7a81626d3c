"""benchmarks/bench_step.py: the step benchmark runs, prints its tables and its losses agree."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest
import torch

SCRIPT = pathlib.Path(__file__).parents[2] / "benchmarks" / "bench_step.py"


@pytest.mark.dist
def test_tiny_step_benchmark_prints_every_mode_and_agrees_with_hf_on_the_loss():
    command = [sys.executable, str(SCRIPT), "--shape", "tiny", "--steps", "1", "--warmup", "0"]
    command += ["--policy-length", "64", "--judge-length", "128", "--judge-overhead", "16"]
    command += ["--lengths", "uniform"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "| mode | implementation | tokens processed | real tokens | s/step |" in out
    for mode in ("scir", "dpo", "sft"):
        processed = {}
        for name in ("megatron-scir", "HF", "HF per kind"):
            row = re.search(
                rf"\| {mode} \| {re.escape(name)} \| ([\d,]+) \(\d+ % real\) \| ([\d,]+)", out
            )
            assert row is not None, (mode, name, out)
            processed[name], real = (int(g.replace(",", "")) for g in row.groups())
            assert processed[name] >= real
        assert f"| {mode} | **megatron-scir / HF** |" in out, mode
        assert f"| {mode} | **megatron-scir / HF per kind** |" in out, mode
        # the per-kind peer pads each kind to its longest row: fewer tokens than one batch
        assert processed["HF per kind"] <= processed["HF"]
        if mode == "scir":  # packed (sdpa spec): only the pack's rounding is not real
            assert processed["megatron-scir"] <= processed["HF per kind"] < processed["HF"]
            assert processed["megatron-scir"] < real + 8
    assert "| megatron-scir |" in out.split("**scir ÷ dpo**")[1]
    heads = re.findall(r"\| (scir|dpo) \| ([\d.]+) \| ([\d.]+) \| \*\*([\d.]+)×\*\* \|", out)
    assert [mode for mode, *_ in heads] == ["scir", "dpo"], out  # the head-alone table
    worst = re.search(r"max abs loss difference .*: (\S+)", out)
    assert worst is not None, out
    assert float(worst.group(1)) <= 1e-4


def test_cpu_peak_tracker_counts_new_storages_once_and_releases_freed_ones():
    from megatron_scir.testing.step_bench import NewTensorBytes

    weight = torch.zeros(1000, 250)  # 1 MB that existed before: never counted
    tracker = NewTensorBytes()
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
