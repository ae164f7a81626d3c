"""The linear example runs one real SCIR step end to end (single process, CPU)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "minimal_scir_step.py"


def test_minimal_scir_step_example_takes_an_optimizer_step_and_prints_the_scir_metrics():
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert "optimizer step taken: True" in out
    for key in (
        "loss/total",
        "loss/pref",
        "loss/cons",
        "loss/conf",
        "scir/consistency_rate",
        "judge/verdict_mass",
    ):
        assert key in out, key
