"""Values derived from the config, each computed in one place (validation lives in ``validate``).

Torch-free: read by the layout, the runtime, the trainer, the reference pass and ``scir plan``.
"""

from __future__ import annotations

from megatron_scir.config.errors import ConfigError
from megatron_scir.config.schema import Config, DataConfig, ParallelConfig, TrainConfig

__all__ = [
    "data_parallel_size",
    "micro_batches_per_step",
    "packs_sequences",
    "pad_multiple",
    "policy_seq_length",
]


def packs_sequences(cfg: Config) -> bool:
    """``data.packed_sequences``, resolved: null packs with the sdpa spec only (Megatron's local
    attention has no packed path; TE's is not tested here, so it is opt-in)."""
    if cfg.data.packed_sequences is not None:
        return cfg.data.packed_sequences
    return cfg.model.transformer_impl == "sdpa"


def policy_seq_length(data: DataConfig) -> int:
    """The policy budget: ``data.max_prompt_length + data.max_response_length``."""
    return data.max_prompt_length + data.max_response_length


def pad_multiple(cfg: Config) -> int:
    """Micro-batch rows (or the packed row) are a multiple of this many tokens:
    ``data.pad_to_multiple_of``, × the TP size under sequence parallelism."""
    p = cfg.parallel
    sp = p.tensor_model_parallel_size if p.sequence_parallel else 1
    return cfg.data.pad_to_multiple_of * sp


def micro_batches_per_step(train: TrainConfig, dp_size: int) -> int:
    """Micro-batches each data-parallel rank runs per optimizer step: G ÷ (k · DP)."""
    return train.global_batch_size // (train.micro_batch_size * dp_size)


def data_parallel_size(parallel: ParallelConfig, world_size: int) -> int:
    """``world_size ÷ (TP × PP)``: the one check that a launched world fits the layout."""
    p = parallel
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size
    if world_size % model_parallel:
        raise ConfigError(
            f"world size {world_size} is not divisible by tensor × pipeline parallel size "
            f"({p.tensor_model_parallel_size} × {p.pipeline_model_parallel_size}): launch a "
            "multiple of it or change parallel.*_model_parallel_size"
        )
    return world_size // model_parallel
