"""Typed configuration: dataclass sections, YAML presets, NeMo-style overrides."""

from megatron_scir.config.errors import ConfigError
from megatron_scir.config.load import config_from_dict, config_to_yaml, list_presets, load_config
from megatron_scir.config.schema import (
    CheckpointConfig,
    Config,
    DataConfig,
    GenerationConfig,
    IterationConfig,
    JudgeConfig,
    LoggingConfig,
    ModelConfig,
    ParallelConfig,
    ScirConfig,
    TrainConfig,
)
from megatron_scir.config.validate import validate, validate_world

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "GenerationConfig",
    "IterationConfig",
    "JudgeConfig",
    "LoggingConfig",
    "ModelConfig",
    "ParallelConfig",
    "ScirConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_yaml",
    "list_presets",
    "load_config",
    "validate",
    "validate_world",
]
