"""The README's demo, reduced: ``scir demo`` as a real process runs seed SFT and one iteration of
SCIR, SRLM and oracle-label DPO, prints the tables, and writes finite numbers for every method and
iteration, the Markdown summary and the plot; seed SFT taught the task."""

from __future__ import annotations

import json
import math
import subprocess
import sys

METRICS = (
    "oracle_accuracy", "judge_accuracy", "implicit_accuracy", "consistency_rate", "pairs_used"
)


def test_the_reduced_demo_reports_every_method_and_seed_sft_taught_the_task(tmp_path):
    out = tmp_path / "demo"
    cmd = [
        sys.executable, "-m", "megatron_scir.cli", "demo", "--out", str(out), "--iterations", "1",
        "--no-progress", "train.sft_epochs=6",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "iteration 1" in done.stdout and "oracle acc" in done.stdout  # the printed tables

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_key = {(r["method"], r["iteration"]): r for r in records}
    assert set(by_key) == {(m, t) for m in ("scir", "srlm", "dpo-oracle") for t in (0, 1)}
    for (method, t), record in by_key.items():
        for key in METRICS if t == 1 else ("oracle_accuracy", "judge_accuracy"):
            assert math.isfinite(record[key]), (method, t, key)
        assert 0.0 <= record["oracle_accuracy"] <= 1.0
    start = by_key["scir", 0]
    # the untrained model answers nothing right; seed SFT teaches most facts
    assert start["oracle_accuracy"] >= start["oracle_accuracy_m0"] + 0.3, start
    assert "| iteration |" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
