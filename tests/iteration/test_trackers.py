"""W&B (offline) and MLflow (a local file store) next to metrics.jsonl (docs/tracking.md).

The series each tool holds, read back with its own API (MLflow's client; W&B's offline
transaction log decoded into W&B's own protobuf records), equal ``metrics.jsonl``; a SIGKILLed
``scir train`` rerun with ``--resume`` continues the same runs without a step twice; ``scir
iterate`` logs each stage's steps and the iteration records; a tracker whose package is missing
is refused at start-up naming the extra.
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

from megatron_scir.config import ConfigError, load_config
from tests.iteration.test_iterate import overrides

wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")

CLI = [sys.executable, "-m", "megatron_scir.cli"]


@pytest.fixture(autouse=True)
def _file_store(monkeypatch):
    """MLflow 3 keeps its file store behind this switch (reading it back here needs it too)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "MLFLOW_ALLOW_FILE_STORE": "true", "WANDB_DISABLE_GIT": "true"}


def _trackers(tmp_path: Path) -> list[str]:
    return ["logging.wandb=true", "logging.mlflow=true",
            f"logging.mlflow_tracking_uri=file://{tmp_path / 'mlruns'}"]


def _run(cmd, env) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ reading the trackers back


def mlflow_series(tmp_path: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    client = mlflow.MlflowClient(tracking_uri=f"file://{tmp_path / 'mlruns'}")
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def wandb_history(run_dir: Path, run_id: str) -> list[dict]:
    """Every history row W&B wrote for ``run_id``, over all its offline files (one per start),
    decoded as W&B's own protobuf records (megatron_scir.training.trackers)."""
    from megatron_scir.training.trackers import wandb_offline_history

    return wandb_offline_history(run_dir, run_id)


def _ids(run_dir: Path) -> dict:
    return json.loads((run_dir / "trackers.json").read_text())


# ------------------------------------------------------------ scir sft / train: SIGKILL, resume


@pytest.mark.parametrize("command", ["sft", "train"])
def test_a_sigkilled_rerun_continues_the_same_runs_with_every_step_once(task, tmp_path, command):
    save = tmp_path / "ckpt"
    # train: 6 steps on labelled pairs; sft: 64 + 64 examples, global batch 8, one epoch
    options = ["--pairs", str(task.eval_pairs)] if command == "train" else []
    job = ["scir.mode=dpo", "train.train_iters=6"] if command == "train" else []
    cmd = [*CLI, command, "--config", "tiny", *options, "--resume", "--no-progress",
           *overrides(task, tmp_path / "unused"), *job, "checkpoint.save_interval=1",
           f"checkpoint.save={save}", *_trackers(tmp_path)]
    num_steps = 6 if command == "train" else 16
    env = _env(tmp_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    marker = save / "step_0000003" / "scir_checkpoint.json"
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = _ids(save)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _run(cmd, env)

    ids = _ids(save)
    assert ids["wandb_id"] == first["wandb_id"] and ids["mlflow_run_id"] == first["mlflow_run_id"]
    steps = _jsonl(save / "logs" / "metrics.jsonl")
    assert [s["step"] for s in steps] == list(range(1, num_steps + 1))
    expected = [(s["step"], s["loss/total"]) for s in steps]
    got = mlflow_series(tmp_path, ids["mlflow_run_id"], "loss/total")
    assert sorted(got) == expected  # each step once, the resumed run's values included
    history = wandb_history(save, ids["wandb_id"])
    logged = [(row["_step"], row["loss/total"]) for row in history if "loss/total" in row]
    assert sorted(logged) == expected and len({s for s, _ in logged}) == num_steps
    assert len(list(save.glob("wandb/offline-run-*"))) == 2  # two starts, one run id


# ------------------------------------------------------------------ scir iterate


LM_EVAL_TASK = """task: scir_sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _local_lm_eval_task(folder: Path) -> Path:
    """An lm-eval task over a local JSONL written here: which of two sums is right."""
    folder.mkdir()
    rows = [{"question": f"What is {a} + {b}?", "choices": [str(a + b), str(a + b + 1)],
             "answer": 0} for a in range(4) for b in range(3)]
    (folder / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "scir_sums.yaml").write_text(LM_EVAL_TASK.format(data=folder / "sums.jsonl"))
    return folder


def test_iterate_logs_each_stage_the_iteration_records_and_lm_eval(task, tmp_path):
    pytest.importorskip("lm_eval")
    run_dir = tmp_path / "run"
    tasks = _local_lm_eval_task(tmp_path / "lm_eval_tasks")
    args = overrides(task, run_dir, "iteration.num_iterations=1",
                     "iteration.prompts_per_iteration=16", *_trackers(tmp_path),
                     "checkpoint.export_hf=true", "iteration.lm_eval_tasks=[scir_sums]",
                     f"iteration.lm_eval_include_path={tasks}")
    env = _env(tmp_path)
    _run([*CLI, "iterate", "--config", "tiny", "--no-progress", *args], env)
    ids = _ids(run_dir)
    records = _jsonl(run_dir / "metrics.jsonl")
    # lm-eval's score of the local task on the iteration's HF export: in metrics.jsonl and MLflow
    accuracy = records[1]["lm_eval/scir_sums/acc"]
    assert 0.0 <= accuracy <= 1.0 and accuracy * 12 == round(accuracy * 12)
    assert mlflow_series(tmp_path, ids["mlflow_run_id"], "iteration/lm_eval/scir_sums/acc") == [
        (1, accuracy)
    ]
    for key in ("loss_total", "pairs_built", "consistency_train_end"):
        want = [(r["iteration"], r[key]) for r in records if key in r and math.isfinite(r[key])]
        assert want and mlflow_series(tmp_path, ids["mlflow_run_id"], f"iteration/{key}") == want
    for stage in ("iter_0/sft", "iter_1/train"):
        steps = _jsonl(run_dir / stage / "logs" / "metrics.jsonl")
        want = [(s["step"], s["loss/total"]) for s in steps]
        assert mlflow_series(tmp_path, ids["mlflow_run_id"], f"{stage}/loss/total") == want
        history = wandb_history(run_dir, ids["wandb_id"])
        got = [(r[f"{stage}/step"], r[f"{stage}/loss/total"]) for r in history
               if f"{stage}/loss/total" in r]
        assert got == want
    client = mlflow.MlflowClient(tracking_uri=f"file://{tmp_path / 'mlruns'}")
    run = client.get_run(ids["mlflow_run_id"])
    assert run.data.params["scir.mode"] == "scir"  # the resolved config
    assert "iterations.png" in [a.path for a in client.list_artifacts(ids["mlflow_run_id"])]

    # a rerun of the finished run: same runs, nothing sent twice
    _run([*CLI, "iterate", "--config", "tiny", "--no-progress", *args], env)
    assert _ids(run_dir)["mlflow_run_id"] == ids["mlflow_run_id"]
    steps = [s for s, _ in mlflow_series(tmp_path, ids["mlflow_run_id"], "iteration/loss_total")]
    assert steps == [1]


def test_a_tracker_without_its_package_is_refused_naming_the_extra(monkeypatch):
    import importlib.util

    from megatron_scir.training import trackers

    real = importlib.util.find_spec
    monkeypatch.setattr(
        trackers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name)
    )
    cfg = load_config("tiny", ["logging.wandb=true"])
    with pytest.raises(ConfigError, match=r"pip install -e \.\[wandb\]"):
        trackers.check_trackers(cfg)
