"""Stage markers and the config check of a run directory (no model, no world)."""

from __future__ import annotations

import pytest

from megatron_scir.config import ConfigError, load_config
from megatron_scir.iteration.stages import (
    StageResult,
    check_unchanged,
    fingerprint,
    finished_markers,
    read_marker,
    stage_dir,
    write_marker,
)


def _fingerprints(cfg, source="random-init:1234"):
    return {
        name: fingerprint(cfg, name, source=source, grader_used=False)
        for name in ("init", "generate", "train", "evaluate")
    }


def _finish(run_dir, t, stage, cfg, **kwargs):
    path = stage_dir(run_dir, t, stage)
    config = fingerprint(cfg, stage, source="random-init:1234", grader_used=False)
    write_marker(path, stage, t, config, StageResult(**kwargs))
    return path


def test_a_marker_round_trips_and_is_written_atomically(tmp_path):
    cfg = load_config("tiny")
    path = _finish(tmp_path, 1, "train", cfg, outputs={"checkpoint": "x"}, metrics={"a": 0.5})
    marker = read_marker(path)
    assert marker["outputs"] == {"checkpoint": "x"} and marker["metrics"] == {"a": 0.5}
    assert [p.name for p in path.iterdir()] == ["stage.json"]  # no temporary file left
    assert read_marker(stage_dir(tmp_path, 1, "generate")) is None
    assert [p.name for p, _ in finished_markers(tmp_path)] == ["train"]


def test_neutral_keys_are_not_part_of_the_fingerprint_and_evaluation_keys_only_of_evaluate():
    cfg = load_config("tiny")
    changed = load_config(
        "tiny",
        [
            "logging.progress=false",
            "iteration.num_iterations=7",
            "parallel.tensor_model_parallel_size=2",
            "generation.max_batch_size=3",
            "iteration.eval_pairs=/x.jsonl",
        ],
    )
    before, after = _fingerprints(cfg), _fingerprints(changed)
    for stage in ("init", "generate", "train"):
        assert before[stage] == after[stage]
    assert before["evaluate"] != after["evaluate"]
    assert "scir.beta" in before["train"] and "iteration.num_iterations" not in before["train"]


def test_a_changed_key_that_invalidates_a_finished_stage_is_refused_with_the_keys(tmp_path):
    cfg = load_config("tiny")
    _finish(tmp_path, 0, "init", cfg)
    _finish(tmp_path, 1, "train", cfg)
    check_unchanged(tmp_path, _fingerprints(cfg))  # the same settings continue
    check_unchanged(tmp_path, _fingerprints(load_config("tiny", ["iteration.num_iterations=5"])))
    changed = load_config("tiny", ["scir.beta=0.5", "train.lr=0.001"])
    with pytest.raises(ConfigError) as error:
        check_unchanged(tmp_path, _fingerprints(changed))
    message = str(error.value)
    assert "iter_0/init" in message  # the first finished stage that differs
    assert "scir.beta: 0.1 -> 0.5" in message and "train.lr: 0.0001 -> 0.001" in message
    assert "iteration.run_dir" in message  # the way out
    with pytest.raises(ConfigError, match="source"):
        check_unchanged(tmp_path, _fingerprints(cfg, source="hf:/elsewhere"))


def test_an_unreadable_marker_says_what_to_delete(tmp_path):
    path = stage_dir(tmp_path, 1, "pairs")
    path.mkdir(parents=True)
    (path / "stage.json").write_text("{not json")
    with pytest.raises(ConfigError, match="delete that stage directory"):
        read_marker(path)
