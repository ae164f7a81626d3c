"""The real-model study in miniature: ``scir demo --model smollm2`` as a real process runs seed SFT
(instruction + judge data) on SmolLM2-135M-Instruct and one short iteration of SCIR, SRLM, oracle
DPO and SCIR with the implicit reward against M_0 from the same M_1; every metric is finite, the
seed judge beats chance on the held-out pairs, and the results carry bootstrap intervals and the
paired differences from SRLM (docs/results.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.real_model

METHODS = ("scir", "srlm", "dpo-oracle", "scir-prev")
# the study's 121 facts (operands 0..10): 121 held-out pairs and graded prompts; a shorter seed
# SFT (64 instruction and 320 judge records, 2 epochs: 48 steps)
TASK = ("max_operand=10", "num_sft=64", "num_judge=320", "num_prompts=32")


@pytest.mark.timeout(1800)
def test_one_short_iteration_of_each_method_on_smollm2(smollm2_dir, tmp_path):
    out = tmp_path / "study"
    cmd = [
        sys.executable, "-m", "megatron_scir.cli", "demo", "--model", "smollm2", "--seeds", "0",
        "--iterations", "1", "--methods", *METHODS, "--out", str(out), "--no-progress",
        *(f"--task={setting}" for setting in TASK),
        "iteration.prompts_per_iteration=8", "train.epochs=1",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    start = {r["method"]: r for r in records if r["iteration"] == 0}
    first = {r["method"]: r for r in records if r["iteration"] == 1}
    assert start.keys() == first.keys() == set(METHODS)
    seed = start["scir"]
    print(
        f"\nM_0: oracle {seed['oracle_accuracy_m0']:.3f}, judge {seed['judge_accuracy_m0']:.3f}; "
        f"M_1: oracle {seed['oracle_accuracy']:.3f}, judge {seed['judge_accuracy']:.3f}"
    )
    # the seed judge beats chance on the 121 held-out pairs: a coin scores 70/121 = 0.579 or more
    # with p = 0.05 (one-sided binomial)
    assert seed["num_pairs"] == 121 and seed["judge_accuracy"] >= 0.579, seed
    for method, record in first.items():
        print(method, {k: record[k] for k in ("oracle_accuracy", "judge_accuracy", "pairs_used")})
        for key in ("oracle_accuracy", "judge_accuracy", "implicit_accuracy", "loss_total"):
            assert math.isfinite(record[key]), (method, key)
        assert record["pairs_built"] > 0 and record["steps"] >= 1, (method, record)
    report = (out / "results.md").read_text()
    assert "## Intervals" in report and "Paired difference from `srlm`" in report
    for method in ("scir", "dpo-oracle", "scir-prev"):
        assert f"| 1 | {method} | " in report.split("Paired difference")[1]
