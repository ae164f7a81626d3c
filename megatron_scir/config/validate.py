"""Checks that span sections. Each failure says which keys to change and how."""

from __future__ import annotations

from megatron_scir.config.errors import ConfigError
from megatron_scir.config.schema import Config


def validate(cfg: Config) -> None:
    """Cross-section checks that do not need the world size (see :func:`validate_world`)."""
    m, p = cfg.model, cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if m.num_attention_heads % tp:
        raise ConfigError(
            f"model.num_attention_heads ({m.num_attention_heads}) must be divisible by "
            f"parallel.tensor_model_parallel_size ({tp}): choose a TP size that divides it"
        )
    if m.num_query_groups % tp:
        raise ConfigError(
            f"model.num_query_groups ({m.num_query_groups}) must be divisible by "
            f"parallel.tensor_model_parallel_size ({tp}): choose a TP size that divides it"
        )
    if m.ffn_hidden_size % tp:
        raise ConfigError(
            f"model.ffn_hidden_size ({m.ffn_hidden_size}) must be divisible by "
            f"parallel.tensor_model_parallel_size ({tp})"
        )
    chunks = pp * (p.virtual_pipeline_model_parallel_size or 1)
    if m.num_layers % chunks:
        what = "pipeline_model_parallel_size"
        if p.virtual_pipeline_model_parallel_size:
            what += " × parallel.virtual_pipeline_model_parallel_size"
        raise ConfigError(
            f"model.num_layers ({m.num_layers}) must be divisible by parallel.{what} ({chunks}): "
            "change the layer count or the pipeline layout"
        )
    if cfg.generation.max_prompt_length + cfg.generation.max_new_tokens > m.max_position_embeddings:
        raise ConfigError(
            "generation.max_prompt_length + generation.max_new_tokens "
            f"({cfg.generation.max_prompt_length} + {cfg.generation.max_new_tokens}) exceeds "
            f"model.max_position_embeddings ({m.max_position_embeddings})"
        )
    seq = max(cfg.data.max_prompt_length + cfg.data.max_response_length, cfg.data.judge_max_length)
    if seq > m.max_position_embeddings:
        raise ConfigError(
            f"the training sequence length ({seq} = max(data.max_prompt_length + "
            "data.max_response_length, data.judge_max_length)) exceeds "
            f"model.max_position_embeddings ({m.max_position_embeddings})"
        )
    policy_seq = cfg.data.max_prompt_length + cfg.data.max_response_length
    for length in (seq, policy_seq):  # judge-less batches (reference pass, dpo/srlm) use the latter
        if p.sequence_parallel and length % tp:
            raise ConfigError(
                f"parallel.sequence_parallel needs the sequence lengths ({seq} with judge rows, "
                f"{policy_seq} without) divisible by parallel.tensor_model_parallel_size ({tp}): "
                "adjust data.judge_max_length or data.max_prompt_length/data.max_response_length"
            )


def validate_world(cfg: Config, world_size: int) -> int:
    """Check the layout against the launched world size; returns the data-parallel size."""
    p, t = cfg.parallel, cfg.train
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size
    if world_size % model_parallel:
        raise ConfigError(
            f"world size {world_size} is not divisible by tensor × pipeline parallel size "
            f"({p.tensor_model_parallel_size} × {p.pipeline_model_parallel_size}): launch a "
            "multiple of it or change parallel.*_model_parallel_size"
        )
    dp = world_size // model_parallel
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
            f"train.micro_batch_size × data-parallel size ({t.micro_batch_size} × {dp})"
        )
    return dp
