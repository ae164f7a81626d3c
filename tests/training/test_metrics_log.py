"""The metrics logs: the step log (JSONL, progress bar, resume) and whole JSONL files of records,
both writing NaN as json's ``NaN`` token."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from megatron_scir.training.metrics_log import (
    LOSS_TOTAL,
    LR,
    METRICS_FILE,
    STEP,
    MetricsLog,
    read_jsonl,
    write_jsonl,
)

NAN = float("nan")


def _log(tmp_path, **kwargs) -> MetricsLog:
    options = {"enabled": True, "tensorboard": False, "progress": False, "total_steps": 4}
    return MetricsLog(tmp_path, **(options | kwargs))


# --------------------------------------------------------------------------------------------
# step log


def test_step_log_writes_nan_as_the_json_token_and_reads_it_back_as_a_float(tmp_path):
    log = _log(tmp_path)
    log.log(1, {LOSS_TOTAL: 0.5, "reward/margin": NAN, "x/inf": math.inf, "x/ninf": -math.inf})
    log.close()
    text = (tmp_path / METRICS_FILE).read_text()
    assert text == (
        '{"loss/total": 0.5, "reward/margin": NaN, "step": 1, "x/inf": Infinity, '
        '"x/ninf": -Infinity}\n'
    )
    assert '"nan"' not in text
    (record,) = read_jsonl(tmp_path / METRICS_FILE)
    assert record[STEP] == 1 and math.isnan(record["reward/margin"])
    assert record["x/inf"] == math.inf and record["x/ninf"] == -math.inf


def test_progress_bar_shows_loss_and_lr(tmp_path):
    log = _log(tmp_path, progress=True)
    log.log(1, {LOSS_TOTAL: 0.5, LR: 1e-3, "train/grad_norm": 2.0})
    postfix = log._bar.postfix
    log.close()
    assert f"{LOSS_TOTAL}=0.5" in postfix
    assert f"{LR}=0.001" in postfix
    assert "grad_norm" not in postfix


def test_resume_cuts_the_log_back_to_the_checkpoint_step(tmp_path):
    log = _log(tmp_path)
    for step in (1, 2, 3):
        log.log(step, {LOSS_TOTAL: float(step)})
    log.close()
    with open(tmp_path / METRICS_FILE, "a") as fh:
        fh.write('{"loss/total": 4.0, "st')  # a writer killed mid-line
    log = _log(tmp_path, start_step=2)
    log.log(3, {LOSS_TOTAL: 30.0})
    log.close()
    records = read_jsonl(tmp_path / METRICS_FILE)
    assert [(r[STEP], r[LOSS_TOTAL]) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_a_disabled_log_writes_nothing(tmp_path):
    log = _log(tmp_path / "logs", enabled=False, progress=True)
    log.log(1, {LOSS_TOTAL: 0.5})
    log.close()
    assert not (tmp_path / "logs").exists()


# --------------------------------------------------------------------------------------------
# whole JSONL files


class _Scalar:
    """A numpy/torch-like scalar: written through ``.item()``."""

    def item(self) -> float:
        return 0.25


def test_jsonl_roundtrip(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    records = [
        {"method": "scir", "iteration": 0, "oracle_accuracy": 0.5, "implicit_accuracy": None},
        {"method": "scir", "iteration": 1, "oracle_accuracy": 0.53, "implicit_accuracy": 0.56},
    ]
    write_jsonl(path, records)
    assert path.read_text().splitlines()[0] == json.dumps(records[0], sort_keys=True)
    assert read_jsonl(path) == records
    write_jsonl(path, records[:1])  # a rerun rewrites the file, it does not append
    assert read_jsonl(path) == records[:1]
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.jsonl"]


def test_jsonl_nan_infinity_scalars_and_paths(tmp_path):
    path = tmp_path / "m.jsonl"
    write_jsonl(path, [{"a": NAN, "b": math.inf, "c": _Scalar(), "d": tmp_path}])
    assert path.read_text() == (
        f'{{"a": NaN, "b": Infinity, "c": 0.25, "d": {json.dumps(str(tmp_path))}}}\n'
    )
    (back,) = read_jsonl(path)
    assert math.isnan(back["a"]) and back["b"] == math.inf and back["c"] == 0.25
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_jsonl(tmp_path / "bad.jsonl", [{"a": object()}])


def test_jsonl_skips_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    write_jsonl(path, [{"iteration": 0}, {"iteration": 1}])
    with open(path, "a") as fh:
        fh.write('{"iteration": 2, "oracle_acc')  # a crash mid-write
    with caplog.at_level("WARNING"):
        assert read_jsonl(path) == [{"iteration": 0}, {"iteration": 1}]
    assert "torn" in caplog.text


def test_jsonl_complete_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_jsonl_bad_line_in_the_middle_names_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(ValueError, match=rf"{path}:2"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n{"a": 3}\n')  # valid JSON but not an object
    with pytest.raises(ValueError, match=rf"{path}:2"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "absent.jsonl")


def test_importing_the_module_is_cheap():
    code = (
        "import sys, megatron_scir.training.metrics_log; "
        "bad = [m for m in ('torch', 'numpy', 'tqdm', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
