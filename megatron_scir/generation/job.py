"""One generation job, top to bottom: config → prompts → tokenizer → model → generate → close.

Inputs are validated before any process group or model exists (a bad prompt file fails in a
second, not after loading 70B weights). The model is this rank's single pipeline stage: Megatron
inference has no interleaved schedule, so a virtual-pipeline layout is dropped for generation
(distributed checkpoints load into any layout).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

from megatron_scir.config import Config, ConfigError, ParallelConfig, load_config
from megatron_scir.data import (
    PromptRecord,
    Tokenizer,
    build_tokenizer,
    check_tokenizer_fits_model,
    read_records,
)
from megatron_scir.generation.stats import GenerationStats

logger = logging.getLogger(__name__)


def run_generation(
    config: str,
    overrides: Sequence[str],
    *,
    prompts_path: str | os.PathLike,
    out_path: str | os.PathLike,
    ckpt: str | None = None,
    hf_dir: str | None = None,
    progress: bool | None = None,
) -> GenerationStats | None:
    """Sample ``generation.num_responses`` responses per prompt into ``out_path``.

    Initialises torch.distributed (from torchrun/Slurm env vars, or a world of one) and
    Megatron's parallel state unless the caller already did, and tears down what it set up.

    Args:
        config: Preset name or YAML path.
        overrides: ``a.b=c`` overrides.
        prompts_path: JSONL of prompt records (``data.on_bad_record`` applies).
        out_path: The generations stream (resumed when it exists).
        ckpt: Megatron distributed checkpoint (default ``checkpoint.load``).
        hf_dir: Hugging Face folder instead of ``ckpt``; its ``config.json`` gives the model
            section and its tokenizer is used unless ``data.tokenizer_path`` is set.
        progress: Progress bar on rank 0 (default ``logging.progress``).

    Returns:
        The run's counts on global rank 0, None on the other ranks.
    """
    cfg = resolve_config(config, overrides, hf_dir=hf_dir, ckpt=ckpt)
    if hf_dir is None:
        ckpt = ckpt or cfg.checkpoint.load
        if not ckpt:
            raise ConfigError("nothing to sample from: pass --ckpt DIR (or checkpoint.load=DIR)")
    prompts, _ = read_records(prompts_path, "prompts", on_bad_record=cfg.data.on_bad_record)
    tokenizer = build_tokenizer(cfg.data)
    check_tokenizer_fits_model(tokenizer, cfg.model)
    _check_generation_settings(cfg, tokenizer)
    owns_world = not dist.is_initialized()
    _init_parallel(cfg)
    rank = dist.get_rank()
    try:
        stats = _generate(
            cfg, tokenizer, prompts, out_path, ckpt=ckpt, hf_dir=hf_dir, progress=progress
        )
    finally:
        _close_parallel(owns_world)
    return stats if rank == 0 else None


def resolve_config(
    config: str, overrides: Sequence[str], *, hf_dir: str | None, ckpt: str | None = None
) -> Config:
    """The job's config, :func:`generation_layout` applied; the model section comes from
    ``hf_dir``'s config.json, or from the checkpoint's metadata (``ckpt`` or
    ``checkpoint.load``), so the shape never has to be repeated on the command line."""
    if hf_dir is not None:
        from megatron_scir.convert import config_from_hf

        cfg = config_from_hf(hf_dir, config, overrides)
        if cfg.data.tokenizer_path is None:
            data = dataclasses.replace(cfg.data, tokenizer_type="hf", tokenizer_path=str(hf_dir))
            cfg = dataclasses.replace(cfg, data=data)
    else:
        cfg = load_config(config, overrides)
        if ckpt or cfg.checkpoint.load:
            from megatron_scir.training.checkpoint import config_for_checkpoint

            cfg = config_for_checkpoint(ckpt or cfg.checkpoint.load, config, overrides)
            if cfg.data.tokenizer_path is None:
                cfg = _tokenizer_from_checkpoint(cfg, ckpt or cfg.checkpoint.load)
    return dataclasses.replace(cfg, parallel=generation_layout(cfg.parallel))


def _tokenizer_from_checkpoint(cfg: Config, ckpt: str) -> Config:
    """Use the tokenizer files the checkpoint carries (``<ckpt>/hf/``, copied from the HF folder
    it was converted from) when ``data.tokenizer_path`` is not set."""
    from megatron_scir.training.checkpoint import checkpoint_assets

    names = {p.name: p for p in checkpoint_assets(ckpt)}
    if "tokenizer.json" in names or "tokenizer_config.json" in names:
        folder = next(iter(names.values())).parent
        data = dataclasses.replace(cfg.data, tokenizer_type="hf", tokenizer_path=str(folder))
    elif "tokenizer.model" in names:
        data = dataclasses.replace(
            cfg.data, tokenizer_type="sentencepiece", tokenizer_path=str(names["tokenizer.model"])
        )
    else:
        return cfg
    return dataclasses.replace(cfg, data=data)


def generation_layout(parallel: ParallelConfig) -> ParallelConfig:
    """The training layout as Megatron inference runs it: one chunk per rank, no SP.

    Megatron-Core inference has no interleaved schedule, and its static engine refuses sequence
    parallelism for dense models; neither changes which weights a rank holds.
    """
    vpp = parallel.virtual_pipeline_model_parallel_size
    if vpp is not None and vpp > 1:
        logger.info(
            "generation: one chunk per pipeline rank (virtual pipeline size %d unused)", vpp
        )
    if parallel.sequence_parallel:
        logger.info("generation: sequence parallelism off (the static engine does not use it)")
    return dataclasses.replace(
        parallel, virtual_pipeline_model_parallel_size=None, sequence_parallel=False
    )


def _check_generation_settings(cfg: Config, tokenizer: Tokenizer) -> None:
    """Fail on sampling, prompt-budget and engine settings before the model is loaded."""
    from megatron_scir.data import ChatFormat
    from megatron_scir.generation.mcore_inference import select_engine
    from megatron_scir.generation.prompts import PromptEncoder
    from megatron_scir.generation.settings import SamplingSettings

    gen = cfg.generation
    SamplingSettings.from_config(gen)
    PromptEncoder(
        ChatFormat(cfg.data.chat_template, tokenizer), gen.max_prompt_length, gen.long_prompts
    )
    select_engine(gen.engine)


def _init_parallel(cfg: Config) -> None:
    from megatron_scir.parallel.state import init_distributed, initialize_model_parallel

    init_distributed(cfg.parallel.distributed_backend)
    world = dist.get_world_size()
    model_parallel = (
        cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size
    )
    if world % model_parallel:
        raise ConfigError(
            f"world size {world} is not divisible by tensor × pipeline parallel size "
            f"({model_parallel}): launch a multiple of it or change parallel.*_model_parallel_size"
        )
    initialize_model_parallel(cfg.parallel, seed=cfg.train.seed)


def _close_parallel(owns_world: bool) -> None:
    from megatron_scir.parallel.state import destroy_model_parallel

    destroy_model_parallel()
    if owns_world and dist.is_initialized():
        dist.destroy_process_group()


def _is_rank_zero() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _generate(
    cfg: Config,
    tokenizer: Tokenizer,
    prompts: list[PromptRecord],
    out_path: str | os.PathLike,
    *,
    ckpt: str | None,
    hf_dir: str | None,
    progress: bool | None,
) -> GenerationStats:
    from megatron_scir.generation.mcore_inference import build_backend
    from megatron_scir.generation.runner import generate_responses

    model = load_model(cfg, ckpt=ckpt, hf_dir=hf_dir)
    with torch.no_grad(), build_backend(model, cfg, tokenizer) as backend:
        return generate_responses(cfg, backend, tokenizer, prompts, out_path, progress=progress)


def load_model(cfg: Config, *, ckpt: str | None = None, hf_dir: str | None = None):
    """This rank's model stage with the weights of ``hf_dir`` (converted) or ``ckpt``."""
    from megatron_scir.models import build_model_chunks

    chunks = build_model_chunks(cfg, init_weights=False)  # every weight is loaded below
    if hf_dir is not None:
        from megatron_scir.convert import load_hf_into_model

        load_hf_into_model(chunks, hf_dir, cfg)
    else:
        from megatron_scir.training.checkpoint import load_checkpoint

        loaded = load_checkpoint(ckpt, chunks, cfg)
        if _is_rank_zero():
            logger.info(
                "loaded %s (iteration %d, step %d)", loaded.path, loaded.iteration, loaded.step
            )
    (model,) = chunks
    return model
