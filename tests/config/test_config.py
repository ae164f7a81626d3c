"""Config tree: presets, NeMo-style overrides, and errors that say what to change."""

from __future__ import annotations

import subprocess
import sys

import pytest

from megatron_scir.config import ConfigError, config_to_yaml, list_presets, load_config


@pytest.mark.parametrize("preset", ["tiny", "chat", "mistral_7b", "llama3_8b", "llama3_70b_fp8"])
def test_every_preset_loads(preset):
    assert preset in list_presets()
    cfg = load_config(preset)
    assert cfg.model.num_layers > 0


def test_llama3_70b_preset_resolves_to_the_real_llama3_70b_shape():
    m = load_config("llama3_70b_fp8").model
    assert (m.num_layers, m.hidden_size, m.ffn_hidden_size) == (80, 8192, 28672)
    assert (m.num_attention_heads, m.num_query_groups, m.head_dim) == (64, 8, 128)
    assert m.vocab_size == 128256 and m.rotary_base == 500000.0
    assert m.rope_scaling and m.rope_scaling_factor == 8.0
    assert (m.rope_low_freq_factor, m.rope_high_freq_factor) == (1.0, 4.0)
    assert m.rope_original_max_position_embeddings == 8192
    assert m.transformer_impl == "te" and m.fp8 == "hybrid" and m.fp8_recipe == "tensorwise"
    p = load_config("llama3_70b_fp8").parallel
    assert (p.tensor_model_parallel_size, p.pipeline_model_parallel_size) == (8, 4)
    assert p.sequence_parallel and p.use_distributed_optimizer
    assert m.recompute_granularity == "full"


def test_mistral_preset_is_mistral_7b_v03():
    m = load_config("mistral_7b").model
    assert m.vocab_size == 32768 and m.rotary_base == 1e6 and not m.rope_scaling
    assert (m.num_layers, m.hidden_size, m.num_query_groups) == (32, 4096, 8)


def test_overrides_set_keys_with_and_without_plus_plus_and_parse_types():
    cfg = load_config(
        "tiny",
        [
            "model.num_layers=4",
            "++scir.beta=0.05",
            "+scir.margin=0.1",
            "generation.stop_strings=[</s>, 'User:']",
            "model.kv_channels=null",
            "scir.divergence=js",
            "model.rotary_base=1e6",
        ],
    )
    assert cfg.model.num_layers == 4 and cfg.scir.beta == 0.05 and cfg.scir.margin == 0.1
    assert cfg.generation.stop_strings == ["</s>", "User:"]
    assert cfg.model.rotary_base == 1e6 and isinstance(cfg.model.rotary_base, float)
    assert cfg.scir.divergence == "js"


def test_yaml_file_source_and_printed_yaml_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(config_to_yaml(load_config("tiny", ["scir.beta=0.2"])))
    cfg = load_config(str(path), ["train.lr=3e-5"])
    assert cfg.scir.beta == 0.2 and cfg.train.lr == 3e-5


def test_unknown_key_names_the_key_its_section_and_close_matches():
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["model.hiden_size=128"])
    msg = str(err.value)
    assert "model.hiden_size" in msg and "section 'model'" in msg and "model.hidden_size" in msg


def test_unknown_section_and_unknown_key_in_a_yaml_file_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown config section 'modle'.*closest: model"):
        load_config("tiny", ["modle.num_layers=2"])
    path = tmp_path / "bad.yaml"
    path.write_text("scir:\n  betta: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*scir\.betta.*scir\.beta"):
        load_config(str(path))


def test_wrong_type_names_the_key_the_value_and_the_expected_type():
    with pytest.raises(ConfigError) as err:
        load_config("tiny", ["model.num_layers=four"])
    msg = str(err.value)
    assert "model.num_layers" in msg and "'four'" in msg and "int" in msg


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  num_layers: 2\n  hidden_size: [64\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: invalid YAML"):
        load_config(str(path))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["parallel.tensor_model_parallel_size=3"],
            "num_attention_heads \\(4\\) must be divisible",
        ),
        (
            ["model.num_layers=3", "parallel.pipeline_model_parallel_size=2"],
            "num_layers \\(3\\) must be divisible",
        ),
        (
            [
                "parallel.pipeline_model_parallel_size=2",
                "parallel.virtual_pipeline_model_parallel_size=2",
            ],
            "num_layers \\(2\\) must be divisible",
        ),
        (["model.fp8=hybrid"], "needs the Transformer Engine spec: set model.transformer_impl=te"),
        (["parallel.sequence_parallel=true"], "needs parallel.tensor_model_parallel_size > 1"),
        (["model.num_query_groups=3"], "must divide model.num_attention_heads"),
        (["scir.divergence=kl"], "scir.divergence: 'kl' is not one of"),
        (["train.global_batch_size=5"], "multiple of train.micro_batch_size"),
        (["judge.verdict_texts=[A]"], "two distinct texts"),
    ],
)
def test_broken_cross_field_rules_say_what_to_change(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("tiny", overrides)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.fp8_recipe=delayed"], "does not work with model.fp8_recipe=delayed"),
        (["model.num_layers_at_end_in_bf16=-1"], "model.num_layers_at_end_in_bf16 must be >= 0"),
        (
            ["model.num_layers_at_start_in_bf16=21"],
            "num_layers_at_start_in_bf16 \\(21\\) must be at most the layers of one pipeline "
            "stage \\(20",
        ),
    ],
)
def test_fp8_bf16_edge_layers_are_checked_against_the_recipe_and_the_stage(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("llama3_70b_fp8", overrides)
    # without FP8 every layer is bf16: the option has nothing to do
    load_config("llama3_70b_fp8", [*overrides, "model.fp8=null"])


@pytest.mark.parametrize(
    ("overrides", "uses", "expected"),
    [
        (["data.judge_max_length=4096"], "training", "exceeds model.max_position_embeddings"),
        (
            ["generation.max_new_tokens=500"],
            "generation",
            "data.max_prompt_length \\+ generation.max_new_tokens \\(32 \\+ 500\\) exceeds",
        ),
    ],
)
def test_a_stage_budget_is_checked_only_for_the_commands_that_run_the_stage(
    overrides, uses, expected
):
    from megatron_scir.config import validate

    cfg = load_config("tiny", overrides)  # loading alone does not check stage budgets
    other = next(u for u in ("generation", "training") if u != uses)
    validate(cfg, uses=(other,))
    with pytest.raises(ConfigError, match=expected):
        validate(cfg, uses=(uses,))


def test_unknown_preset_suggests_close_names():
    with pytest.raises(ConfigError, match="did you mean llama3_8b"):
        load_config("llama3_8")


def test_world_size_check_names_the_layout():
    from megatron_scir.config import validate_world

    cfg = load_config("tiny", ["parallel.tensor_model_parallel_size=2"])
    assert validate_world(cfg, 4) == 2
    with pytest.raises(ConfigError, match="world size 3 is not divisible"):
        validate_world(cfg, 3)


def test_importing_the_package_does_not_import_megatron_core():
    code = (
        "import sys, megatron_scir, megatron_scir.config, megatron_scir.models; "
        "bad = [m for m in sys.modules if m.startswith(('megatron.core', 'transformer_engine'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_field_is_documented_and_the_configuration_page_is_current():
    import dataclasses
    import pathlib
    import typing

    from megatron_scir.config import Config
    from megatron_scir.config.docs import field_docs, render

    for section, cls in typing.get_type_hints(Config).items():
        missing = {f.name for f in dataclasses.fields(cls)} - field_docs(cls).keys()
        assert not missing, f"undocumented fields in {section}: {missing}"
    page = pathlib.Path(__file__).parents[2] / "docs" / "configuration.md"
    assert page.read_text() == render(), "run: python -m megatron_scir.config.docs > " + str(page)


def test_text_overrides_are_taken_verbatim_and_yes_no_stay_strings(tmp_path):
    cfg = load_config(
        "tiny",
        [
            "judge.verdict_texts=[Yes, No]",
            "judge.verdict_prefix= ",
            "data.chat_template=User: {prompt} Assistant:",
            "data.tokenizer_path=null",
            "data.on_bad_record=skip",
        ],
    )
    assert cfg.judge.verdict_texts == ["Yes", "No"]
    assert cfg.judge.verdict_prefix == " "
    assert cfg.data.chat_template == "User: {prompt} Assistant:"
    assert cfg.data.tokenizer_path is None
    path = tmp_path / "judge.yaml"
    path.write_text("judge:\n  verdict_texts: [yes, no]\nparallel:\n  sequence_parallel: false\n")
    assert load_config(str(path)).judge.verdict_texts == ["yes", "no"]
