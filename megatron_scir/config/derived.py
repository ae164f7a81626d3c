"""Values derived from the config, each computed in one place (validation lives in ``validate``).

Torch-free: read by the layout, the runtime, the trainer, the reference pass and ``scir plan``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from megatron_scir.config.errors import ConfigError
from megatron_scir.config.schema import Config, DataConfig, ParallelConfig, TrainConfig

__all__ = [
    "data_parallel_size",
    "fit_budgets",
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


def fit_budgets(cfg: Config, *, keep: Collection[str] = ()) -> Config:
    """``cfg`` with its token budgets shrunk to the model's ``max_position_embeddings``.

    For presets whose budgets are defaults for any model (``chat``): ``data.judge_max_length``
    is capped at the positions; ``data.max_prompt_length`` and ``data.max_response_length``
    shrink in proportion until their sum fits (one of them in ``keep`` takes the rest);
    ``generation.max_new_tokens`` follows the response budget. Keys in ``keep`` (set on the
    command line) never change: ``validate`` judges them.
    """
    positions = cfg.model.max_position_embeddings
    d, g = cfg.data, cfg.generation
    prompt, response, judge = d.max_prompt_length, d.max_response_length, d.judge_max_length
    if "data.judge_max_length" not in keep:
        judge = min(judge, positions)
    if prompt + response > positions:
        free = {"data.max_prompt_length", "data.max_response_length"} - set(keep)
        if len(free) == 2:
            prompt = prompt * positions // (prompt + response)
            response = positions - prompt
        elif "data.max_prompt_length" in free:
            prompt = max(positions - response, 0) or prompt
        elif free:
            response = max(positions - prompt, 0) or response
    new = g.max_new_tokens
    if "generation.max_new_tokens" not in keep:
        new = min(new, response, max(positions - prompt, 1))
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(
            d, max_prompt_length=prompt, max_response_length=response, judge_max_length=judge
        ),
        generation=dataclasses.replace(g, max_new_tokens=new),
    )


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
