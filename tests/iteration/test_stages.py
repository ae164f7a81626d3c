"""Stage markers and the config check of a run directory (no model, no world)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from megatron_scir.config import (
    Config,
    ConfigError,
    DataConfig,
    GenerationConfig,
    JudgeConfig,
    ModelConfig,
    TrainConfig,
    load_config,
)
from megatron_scir.config.outputs import reference_config_inputs
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
    def of(stage, t):
        return fingerprint(cfg, stage, t, source=source, grader_used=False)

    return of


def _finish(run_dir, t, stage, cfg, **kwargs):
    path = stage_dir(run_dir, t, stage)
    config = fingerprint(cfg, stage, t, source="random-init:1234", grader_used=False)
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


def test_a_stage_depends_on_its_own_keys_and_those_upstream_and_never_on_neutral_keys():
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
    for stage, t in (("init", 0), ("sft", 0), ("generate", 1), ("train", 1), ("train", 2)):
        assert before(stage, t) == after(stage, t)
    assert before("evaluate", 1) != after("evaluate", 1)
    beta = _fingerprints(load_config("tiny", ["scir.beta=0.5"]))
    assert beta("generate", 1) == before("generate", 1)  # iteration 1 samples from M_1
    assert beta("train", 1) != before("train", 1)
    assert beta("generate", 2) != before("generate", 2)  # M_2 was trained with beta
    assert "model.num_layers" in before("init", 0) and "train.lr" not in before("init", 0)


def _section(name, cls):
    return {f"{name}.{f.name}" for f in dataclasses.fields(cls)}


# M_1: M_0 (source, model, checkpoint.load, seed) and the seed SFT (data, judge, train)
_M1 = (
    {"source", "checkpoint.load", "iteration.seed_sft"}
    | _section("model", ModelConfig)
    | _section("data", DataConfig) - {"data.num_workers", "data.max_truncated_fraction"}
    | _section("judge", JudgeConfig)
    | _section("train", TrainConfig)
)
_GENERATION = _section("generation", GenerationConfig) - {
    *("generation.max_batch_size", "generation.chunk_size", "generation.engine")
}


def test_the_fingerprints_hold_exactly_the_keys_that_reach_a_stage():
    cfg = load_config("tiny")
    of = _fingerprints(cfg)
    init = {"source", "checkpoint.load", "train.seed"} | _section("model", ModelConfig)
    assert set(of("init", 0)) == init and of("init", 0)["source"] == "random-init:1234"
    assert set(of("sft", 0)) == _M1
    generate = of("generate", 1)
    assert set(generate) == _M1 | _GENERATION | {
        *("iteration.prompts_per_iteration", "iteration.prompt_slices")
    }
    assert "generation.temperature" in generate and "data.max_prompt_length" in generate
    assert not [k for k in generate if k.startswith(("parallel.", "logging.", "scir."))]
    assert set(of("pairs", 1)) == set(generate) | {"scir.mode"}
    # the reference stage's own keys are M_1's and its layout, which a rerun may change
    own = {"scir.srlm_drop_margin", "scir.implicit_reference", "scir.previous_model"}
    assert set(of("reference", 1)) == set(of("pairs", 1)) | own
    assert "parallel.sequence_parallel" in reference_config_inputs(cfg)
    every = set(of("reference", 1)) | {f"scir.{f.name}" for f in dataclasses.fields(cfg.scir)}
    assert set(of("train", 1)) == set(of("export", 1)) == every
    assert all(
        set(of(stage, t)) == every for stage in ("init", "generate", "train") for t in (2, 3)
    )
    evaluation = {"iteration.eval_pairs", "iteration.eval_prompts", "iteration.grader"}
    evaluation |= {"generation.max_new_tokens", "generation.stop_strings"}
    evaluation |= {"scir.beta", "scir.margin", "scir.tie_eps"}
    lm_eval = ("tasks", "include_path", "limit", "batch_size")
    evaluation |= {f"iteration.lm_eval_{k}" for k in lm_eval}
    assert set(of("evaluate", 0)) == _M1 | evaluation
    assert set(of("evaluate", 2)) == every | evaluation
    graded = fingerprint(cfg, "pairs", 1, source="random-init:1234", grader_used=True)
    assert set(graded) == set(of("pairs", 1)) | {"iteration.grader"}
    assert of("evaluate", 2)["model.hidden_size"] == cfg.model.hidden_size
    assert of("evaluate", 2)["judge.verdict_texts"] == cfg.judge.verdict_texts
    sections = {f.name for f in dataclasses.fields(Config)}
    assert {k.split(".")[0] for k in every - {"source"}} == sections - {"parallel", "logging"}


def test_a_changed_key_that_invalidates_a_finished_stage_is_refused_with_the_keys(tmp_path):
    cfg = load_config("tiny")
    _finish(tmp_path, 0, "init", cfg)
    _finish(tmp_path, 1, "generate", cfg)
    _finish(tmp_path, 1, "train", cfg)
    check_unchanged(tmp_path, _fingerprints(cfg))  # the same settings continue
    check_unchanged(tmp_path, _fingerprints(load_config("tiny", ["iteration.num_iterations=5"])))
    changed = load_config("tiny", ["scir.beta=0.5", "scir.margin=0.2"])
    with pytest.raises(ConfigError) as error:
        check_unchanged(tmp_path, _fingerprints(changed))
    message = str(error.value)
    assert "iter_1/train" in message  # the first finished stage that differs
    assert "scir.beta: 0.1 -> 0.5" in message and "scir.margin: 0.0 -> 0.2" in message
    assert "iteration.run_dir" in message  # the way out
    # the seed model's training settings reach M_1, so iteration 1's samples differ
    with pytest.raises(ConfigError, match="iter_1/generate(.|\n)*train.lr: 0.0001 -> 0.001"):
        check_unchanged(tmp_path, _fingerprints(load_config("tiny", ["train.lr=0.001"])))
    with pytest.raises(ConfigError, match="iter_0/init(.|\n)*source"):
        check_unchanged(tmp_path, _fingerprints(cfg, source="hf:/elsewhere"))


def test_a_key_a_stage_did_not_record_counts_as_unchanged_only_at_its_default(tmp_path):
    # a run finished by an older version (its markers lack keys added since) continues
    cfg = load_config("tiny")
    path = _finish(tmp_path, 1, "reference", cfg)
    marker = json.loads((path / "stage.json").read_text())
    del marker["config"]["scir.implicit_reference"]
    (path / "stage.json").write_text(json.dumps(marker))
    check_unchanged(tmp_path, _fingerprints(cfg))
    with pytest.raises(ConfigError, match="scir.implicit_reference: <absent> -> 'previous'"):
        check_unchanged(
            tmp_path, _fingerprints(load_config("tiny", ["scir.implicit_reference=previous"]))
        )


def test_an_unreadable_marker_says_what_to_delete(tmp_path):
    path = stage_dir(tmp_path, 1, "pairs")
    path.mkdir(parents=True)
    (path / "stage.json").write_text("{not json")
    with pytest.raises(ConfigError, match="delete that stage directory"):
        read_marker(path)
