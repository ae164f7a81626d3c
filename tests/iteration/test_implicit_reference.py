"""``scir.implicit_reference=previous`` in ``scir iterate`` (tiny model, CPU): the implicit reward
of iteration t reads log π_{t−1} (M_0, the model seed SFT started from, at t = 1), stored with the
pairs by the reference stage, and has an opinion at the first training step; the settings that
cannot work are refused before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_scir.data import read_records
from tests.iteration.test_iterate import overrides


def _iterate(task, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "megatron_scir.cli", "iterate", "--config", "tiny", "--no-progress",
        *overrides(task, run_dir, "iteration.prompts_per_iteration=16", *extra),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _model_id(sidecar: Path) -> str:
    return json.loads(sidecar.read_text())["inputs"]["model_id"]


def test_previous_reference_reads_the_model_before_each_iteration(task, tmp_path):
    run_dir = tmp_path / "run"
    done = _iterate(
        task, run_dir, "scir.implicit_reference=previous", "iteration.num_iterations=2"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    m0, m1 = (
        json.loads((run_dir / "iter_0" / name / "stage.json").read_text())["outputs"]["checkpoint"]
        for name in ("init", "sft")
    )
    for t, previous in ((1, m0), (2, m1)):
        reference = run_dir / f"iter_{t}" / "reference"
        pairs, _ = read_records(reference / "pairs.ref.jsonl", "pairs")
        assert pairs and all(None not in (p.prev_logps_1, p.ref_logps_1) for p in pairs)
        # M_{t-1} and M_t give other log-probs to the same responses
        assert sum(p.prev_logps_1 != p.ref_logps_1 for p in pairs) == len(pairs)
        sidecar = reference / "pairs.ref.jsonl.previous.pass.jsonl.inputs.json"
        assert _model_id(sidecar).startswith(f"checkpoint:{Path(previous).resolve()}|")
        # the implicit reward has an opinion at the first step (under `current` P_I = ½ there,
        # exactly); ties left come from the tiny judge, whose P_G sits near ½
        log = run_dir / f"iter_{t}" / "train" / "logs" / "metrics.jsonl"
        first = json.loads(log.read_text().splitlines()[0])
        assert first["scir/p_implicit_std"] > 1e-3 and first["scir/consistency_rate"] > 0
        assert first["scir/selected_rate"] == first["scir/consistency_rate"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("iteration.seed_sft=false",), "scir.previous_model=CKPT"),
        (("scir.mode=srlm",), "scir.mode=srlm reads no implicit reward"),
    ],
    ids=["no_m0", "srlm"],
)
def test_previous_reference_without_m0_or_outside_scir_is_refused_before_anything_runs(
    task, tmp_path, extra, message
):
    run_dir = tmp_path / "run"
    done = _iterate(task, run_dir, "scir.implicit_reference=previous", *extra)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (run_dir / "iter_0").exists()
