"""The one declaration of the config keys that change an output (no model, no torch)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from megatron_scir.config import Config, JudgeConfig, ModelConfig, load_config
from megatron_scir.config.outputs import (
    LAYOUT,
    NEUTRAL,
    SOURCE,
    STAGE_INPUTS,
    STAGE_ORDER,
    flat_config,
    matches,
    reference_config_inputs,
    select,
    stage_inputs,
    stage_keys,
)


def _section(name, cls):
    return {f"{name}.{f.name}" for f in dataclasses.fields(cls)}


def test_the_flat_config_names_every_key_of_every_section_once():
    flat = flat_config(load_config("tiny", ["scir.beta=0.5"]))
    sections = {f.name for f in dataclasses.fields(Config)}
    assert {name.split(".", 1)[0] for name in flat} == sections
    assert flat["scir.beta"] == 0.5 and flat["model.num_layers"] == 2
    assert _section("model", ModelConfig) <= set(flat)


def test_every_declared_key_exists_and_every_config_key_is_declared():
    flat = flat_config(Config())
    patterns = {p for keys in STAGE_INPUTS.values() for p in keys} | set(NEUTRAL) | set(LAYOUT)
    for pattern in patterns - {SOURCE}:
        assert any(matches(name, (pattern,)) for name in flat), f"{pattern} names no config key"
    stage_read = [p for keys in STAGE_INPUTS.values() for p in keys]
    undeclared = [n for n in flat if not matches(n, NEUTRAL) and not matches(n, stage_read)]
    assert not undeclared, f"declare these as a stage's input or as neutral: {undeclared}"
    assert tuple(STAGE_INPUTS) == STAGE_ORDER
    assert all(matches(key, NEUTRAL) for key in LAYOUT)  # resuming never depends on the layout


def test_the_reference_stage_reads_exactly_the_keys_of_the_reference_hash():
    cfg = load_config("tiny", ["parallel.tensor_model_parallel_size=2", "scir.mode=srlm"])
    inputs = reference_config_inputs(cfg)
    expected = _section("model", ModelConfig) | _section("judge", JudgeConfig)
    expected |= {
        *("data.tokenizer_type", "data.tokenizer_path", "data.chat_template"),
        *("data.on_bad_record", "data.max_prompt_length", "data.max_response_length"),
        *("data.judge_max_length", "data.shuffle", "data.group_by_length"),
        *("data.packed_sequences", "data.pad_to_multiple_of"),
        *("scir.mode", "scir.srlm_drop_margin", "scir.implicit_reference"),
        "scir.previous_model",
        *("train.micro_batch_size", "train.global_batch_size", "train.seed"),
        *("parallel.tensor_model_parallel_size", "parallel.pipeline_model_parallel_size"),
        *("parallel.virtual_pipeline_model_parallel_size", "parallel.sequence_parallel"),
    }
    assert set(inputs) == expected
    assert inputs["parallel.tensor_model_parallel_size"] == 2 and inputs["scir.mode"] == "srlm"
    assert inputs["judge.verdict_texts"] == cfg.judge.verdict_texts
    assert json.loads(json.dumps(inputs)) == inputs
    # the layout counts for the exact bits only: resuming the stage ignores it
    assert set(stage_inputs(cfg, "reference")) == expected - set(LAYOUT)
    assert inputs == stage_inputs(cfg, "reference", exact=True)


def test_neutral_keys_are_dropped_and_the_layout_kept_only_for_exact_outputs():
    flat = {
        "logging.progress": False,
        "parallel.sequence_parallel": True,
        "parallel.use_distributed_optimizer": True,
        "data.num_workers": 4,
        "data.shuffle": True,
    }
    everything = ("logging.", "parallel.", "data.")
    assert select(flat, everything) == {"data.shuffle": True}
    exact = select(flat, everything, exact=True)
    assert exact == {"parallel.sequence_parallel": True, "data.shuffle": True}


def test_stage_keys_follow_the_stages_that_feed_a_stage():
    assert stage_keys("init", 0) == STAGE_INPUTS["init"]
    assert stage_keys("train", 0) == STAGE_INPUTS["init"] + STAGE_INPUTS["sft"]
    assert "scir.mode" not in stage_keys("generate", 1) and "scir.mode" in stage_keys("pairs", 1)
    assert stage_keys("generate", 2) == stage_keys("train", 3)  # M_t carries every choice
    assert set(STAGE_INPUTS["evaluate"]) <= set(stage_keys("evaluate", 0))
    assert not set(STAGE_INPUTS["evaluate"]) & set(stage_keys("export", 2))
    with pytest.raises(ValueError, match="unknown stage 'tarin'"):
        stage_keys("tarin", 1)


def test_importing_the_declaration_does_not_import_torch():
    code = (
        "import sys, megatron_scir.config.outputs; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_seed_sft_generation_and_pairs_do_not_depend_on_training_settings():
    # a budget refusal at the reference stage advises raising data.max_response_length: without
    # seed SFT (M_1 = M_0) the finished generation and pairs of iteration 1 must accept that
    def keys(stage, iteration, seed_sft):
        patterns = stage_keys(stage, iteration, seed_sft=seed_sft)
        return {name for name in flat_config(Config()) if matches(name, patterns)}

    for stage in ("generate", "pairs"):
        off = keys(stage, 1, seed_sft=False)
        assert not {"data.max_response_length", "data.judge_max_length", "train.lr"} & off
        assert {"data.prompts", "data.chat_template", "data.max_prompt_length"} <= off
        assert "iteration.seed_sft" in off
        assert "data.max_response_length" in keys(stage, 1, seed_sft=True)  # M_1 trained with it
        assert "data.max_response_length" in keys(stage, 2, seed_sft=False)  # M_2 trained with it
    assert {"data.pairs_per_prompt", "train.seed"} <= keys("pairs", 1, seed_sft=False)
    for stage in ("reference", "train", "evaluate"):  # they read the budgets themselves
        assert "data.max_response_length" in keys(stage, 1, seed_sft=False)
