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

    # --report runs nothing and rebuilds the same records from the stage markers alone
    (out / "results.jsonl").unlink()
    report = [sys.executable, "-m", "megatron_scir.cli", "demo", "--report", "--out", str(out)]
    done = subprocess.run(report, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    rebuilt = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # the live demo labels M_1's row with the seed-SFT run's scir.mode; no marker records it
    assert {(r["method"], r["iteration"]): r for r in rebuilt} == {
        key: {k: v for k, v in r.items() if not (k == "mode" and key[1] == 0)}
        for key, r in by_key.items()
    }
    summary = (out / "results.md").read_text()
    assert "Paired difference from `srlm`" in summary and "Paired difference from `scir`" in summary
    assert "| 1 | dpo-oracle |" in summary


def test_report_without_finished_runs_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "megatron_scir.cli", "demo", "--report", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"scir: error: scir demo --report: no finished iteration under {tmp_path}"
    ), done.stderr
    assert not (tmp_path / "results.md").exists()
    done = subprocess.run([*cmd, "train.lr=1e-3"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "runs nothing: it takes --out, --seeds and --methods" in (
        done.stderr
    ), done.stderr


def test_a_stop_signal_ends_the_demo_with_75_and_one_line_even_during_a_runs_last_stage(tmp_path):
    """SIGTERM while the seed-SFT run is in its last stage (evaluate, which checks no signal):
    the demo stops after that run (before, the run returned and the signal was forgotten: the
    demo went on to the methods), and a stop inside training exits 75 with one line (before, a
    Preempted traceback and status 1)."""
    import signal
    import time

    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "megatron_scir.cli", "demo", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last_stage = out / "seed0" / "seed_sft" / "iter_0" / "evaluate"
    deadline = time.monotonic() + 600
    while not last_stage.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 75, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [x for x in stdout.splitlines() if x.startswith("scir demo: ")]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0], stdout[-2000:]
    assert lines[0].endswith("rerun the same command to continue")
    assert not (out / "seed0" / "scir" / "iter_1" / "train").exists()  # no method trained
