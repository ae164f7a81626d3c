"""Sampling settings mirror the generation config and refuse what Megatron cannot sample."""

from __future__ import annotations

import pytest
import torch

from megatron_scir.config import ConfigError, load_config
from megatron_scir.generation import SamplingSettings


def test_settings_come_from_the_generation_section():
    cfg = load_config("tiny", ["generation.temperature=0.5", "generation.stop_strings=['###']"])
    settings = SamplingSettings.from_config(cfg.generation)
    assert settings.temperature == 0.5 and settings.top_p == cfg.generation.top_p
    assert settings.stop_strings == ("###",)
    assert not settings.greedy and settings.nucleus


@pytest.mark.parametrize(
    ("kwargs", "greedy"),
    [({"temperature": 0.0}, True), ({"top_k": 1}, True), ({"temperature": 0.7}, False)],
)
def test_temperature_zero_or_top_k_one_is_greedy(kwargs, greedy):
    assert SamplingSettings(**kwargs).greedy is greedy


def test_top_k_with_top_p_is_refused_with_the_keys_to_change():
    with pytest.raises(ConfigError, match="generation.top_k=0 or generation.top_p=1"):
        SamplingSettings(top_k=20, top_p=0.9)
    assert SamplingSettings(top_k=20, top_p=1.0).top_k == 20  # top_p 1 is off


def test_an_empty_stop_string_is_refused():
    with pytest.raises(ConfigError, match="stop_strings"):
        SamplingSettings(stop_strings=("",))


def test_engine_auto_uses_the_static_engine_and_says_why():
    from megatron_scir.generation.mcore_inference import select_engine

    assert select_engine("static") == ("static", "generation.engine=static")
    name, reason = select_engine("auto")
    assert name == "static" and "no dynamic-engine backend" in reason
    assert ("no CUDA device" in reason) is not torch.cuda.is_available()


def test_engine_dynamic_is_refused_with_its_missing_requirements():
    from megatron_scir.generation.mcore_inference import select_engine

    with pytest.raises(
        ConfigError, match="generation.engine=dynamic cannot run here: .*flash-attn"
    ):
        select_engine("dynamic")
