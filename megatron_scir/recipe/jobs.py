"""``scir sft`` / ``scir train`` and ``scir generate``: config → world → model → stage.

Inputs are validated before any process group or model exists (a bad prompt file fails in a
second, not after loading 70B weights). Each job enters the parallel world
(:func:`~megatron_scir.parallel.runtime.parallel_world`: torchrun/Slurm env vars or a world of
one; a world the caller set up is kept) for its duration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from megatron_scir.checkpoint import latest_checkpoint
from megatron_scir.config import Config, ConfigError, validate
from megatron_scir.config.choices import Engine, ImplicitReference
from megatron_scir.config.validate import GENERATION, TRAINING
from megatron_scir.data import (
    Tokenizer,
    build_tokenizer,
    check_tokenizer_fits_model,
    read_records,
)
from megatron_scir.generation import (
    GenerationStats,
    PromptEncoder,
    SamplingSettings,
    generate,
    generation_layout,
)
from megatron_scir.generation.mcore_inference import select_engine
from megatron_scir.generation.runner import check_output, generate_responses
from megatron_scir.generation.vllm_backend import build_vllm_backend
from megatron_scir.parallel.runtime import parallel_world
from megatron_scir.recipe.model import HF, RANDOM_INIT, ModelSource, load_model, load_run_config
from megatron_scir.recipe.stages import pairs_have_ref_logps, reference_stage, train_stage
from megatron_scir.training.metrics_log import LOSS_TOTAL
from megatron_scir.training.trackers import Trackers, check_trackers, wanted
from megatron_scir.training.trainer import TrainResult

__all__ = ["SFT", "TRAIN", "generate_job", "train_job"]

SFT, TRAIN = "sft", "train"


def train_job(
    stage: str,
    config: str | None,
    overrides: Sequence[str],
    *,
    pairs: str | os.PathLike | None = None,
    ckpt: str | None = None,
    hf_dir: str | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """``scir sft`` (``stage="sft"``) or ``scir train``: one training job, top to bottom.

    ``scir train`` on pairs without reference log-probs first runs the reference pass with the
    starting weights M_t into ``<checkpoint.save>/pairs.ref.jsonl`` (skipped when valid for the
    same inputs) and trains on that file. Rank 0 prints the summary line.
    """
    cfg = load_run_config(config, overrides, ckpt=ckpt, hf_dir=hf_dir, uses=(TRAINING,))
    if cfg.checkpoint.save is None:
        raise ConfigError("training needs checkpoint.save=DIR (checkpoints and --resume)")
    save_dir = Path(cfg.checkpoint.save)
    log_dir = Path(cfg.logging.log_dir or save_dir / "logs")
    check_trackers(cfg)
    tokenizer = _tokenizer(cfg)
    source = ModelSource.of(cfg, ckpt=ckpt, hf_dir=hf_dir)
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime, _trackers(
        runtime, cfg, save_dir
    ) as tracker:
        resuming = resume and latest_checkpoint(save_dir) is not None
        # a resumed run loads its own checkpoint in the trainer: start from a random init
        start = ModelSource(RANDOM_INIT, seed=cfg.train.seed) if resuming else source
        chunks = load_model(cfg, start)
        previous = _previous_model(cfg) if stage == TRAIN else None
        if stage == TRAIN and (
            not pairs_have_ref_logps(pairs)
            or (previous is not None and not pairs_have_ref_logps(pairs, "prev_logps_1"))
        ):
            pairs = _reference_pairs(runtime, cfg, tokenizer, chunks, pairs, save_dir, resuming,
                                     source=source, previous=previous)
        trained = train_stage(
            runtime,
            cfg,
            tokenizer,
            chunks,
            pairs=pairs if stage == TRAIN else None,
            save_dir=save_dir,
            log_dir=log_dir,
            resume=resume,
            progress=progress,
            tracker=None if tracker is None else (tracker, ""),
        )
        if runtime.is_rank_zero:
            print(_summary(stage, trained.result), flush=True)
        return trained.result


@contextlib.contextmanager
def _trackers(runtime, cfg, run_dir: Path):
    """W&B / MLflow runs of ``run_dir`` on global rank 0 (None elsewhere or when off)."""
    trackers = Trackers(run_dir, cfg) if runtime.is_rank_zero and wanted(cfg) else None
    try:
        yield trackers
    finally:
        if trackers is not None:
            trackers.close()


def _previous_model(cfg) -> ModelSource | None:
    """M_{t−1} of ``scir.implicit_reference=previous`` (``scir.previous_model``), else None."""
    if cfg.scir.implicit_reference != ImplicitReference.PREVIOUS:
        return None
    if cfg.scir.previous_model is None:
        raise ConfigError(
            "scir.implicit_reference=previous reads log π_{t-1} of every pair: set "
            "scir.previous_model=CKPT (the model the starting checkpoint was trained from)"
        )
    return ModelSource.checkpoint(cfg.scir.previous_model)


def _reference_pairs(
    runtime, cfg, tokenizer, chunks, pairs, save_dir, resuming, *, source, previous=None
):
    """The reference pass's file of ``pairs`` with M_t (``chunks``, loaded from ``source``)."""
    out = save_dir / "pairs.ref.jsonl"
    if resuming:  # the weights are no longer M_t: the file must be the one written at the start
        if not out.is_file():
            raise ConfigError(
                f"resuming on pairs without reference log-probs needs {out}, written before the "
                "first step: rerun without --resume (or from the M_t checkpoint)"
            )
        return out
    summary = reference_stage(
        runtime, cfg, tokenizer, model=source, pairs=pairs, out=out, chunks=chunks,
        previous=previous,
    )
    if runtime.is_rank_zero:
        print(f"reference pass: {summary.num_pairs} pairs -> {out}", flush=True)
    return out


def _summary(stage: str, result: TrainResult) -> str:
    """The final line: steps, skips, the last loss, where the weights are."""
    s = result.state
    loss = result.metrics.get(LOSS_TOTAL, float("nan"))
    how = "stopped by a signal at" if result.preempted else "finished"
    return (
        f"scir {stage}: {how} step {s.step} ({s.skipped_steps} skipped), last {LOSS_TOTAL} "
        f"{loss:.4f}, checkpoint {result.checkpoint}"
    )


def generate_job(
    config: str | None,
    overrides: Sequence[str],
    *,
    prompts_path: str | os.PathLike,
    out_path: str | os.PathLike,
    ckpt: str | None = None,
    hf_dir: str | None = None,
    progress: bool | None = None,
) -> GenerationStats | None:
    """``scir generate``: ``generation.num_responses`` responses per prompt into ``out_path``
    (resumed when it exists), from ``ckpt`` / ``checkpoint.load`` or ``hf_dir``, in the
    generation layout (one chunk per pipeline rank, SP off). The output is checked (writable,
    unlocked, made by the same model, tokenizer and settings when it exists) before the model
    loads. The counts on global rank 0, None on the other ranks."""
    cfg = load_run_config(config, overrides, ckpt=ckpt, hf_dir=hf_dir)
    cfg = dataclasses.replace(cfg, parallel=generation_layout(cfg.parallel))
    validate(cfg, uses=(GENERATION,))
    source = ModelSource.of(cfg, ckpt=ckpt, hf_dir=hf_dir)
    if source.kind == RANDOM_INIT:
        raise ConfigError("nothing to sample from: pass --ckpt DIR (or checkpoint.load=DIR)")
    prompts, _ = read_records(
        prompts_path, "prompts", on_bad_record=cfg.data.on_bad_record, columns=cfg.data.columns
    )
    tokenizer = _tokenizer(cfg)
    # sampling settings, every prompt against its budget and the engine fail before the model
    # is loaded (a bad prompt file fails in a second, not after loading 70B weights)
    SamplingSettings.from_config(cfg.generation)
    PromptEncoder.from_config(cfg, tokenizer).encode_all(prompts)
    vllm = cfg.generation.engine == Engine.VLLM
    if vllm and source.kind != HF:
        raise ConfigError(
            "generation.engine=vllm samples from a Hugging Face folder (vLLM reads no Megatron "
            f"checkpoint): export {source.path} with scir convert mcore-to-hf CKPT OUT and pass "
            "--hf-dir OUT, or use generation.engine=static"
        )
    select_engine(cfg.generation.engine)
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        # the model's content identity (its files checked against their recorded hashes), then
        # the output: writable, not locked by another writer, made by these inputs if it exists
        identity = runtime.on_rank_zero(lambda: source.identity)
        runtime.on_rank_zero(lambda: check_output(out_path, prompts, cfg, inputs_id=identity))
        if vllm:  # vLLM loads the folder itself: no Megatron model on the GPUs beside it
            backend = build_vllm_backend(source.path, cfg, tokenizer, runtime=runtime)
            with backend:
                stats = generate_responses(
                    runtime, cfg, backend, tokenizer, prompts, out_path, progress=progress,
                    inputs_id=identity,
                )
            return stats if runtime.is_rank_zero else None
        chunks = load_model(cfg, source, log=runtime.is_rank_zero)
        stats = generate(
            runtime, chunks, tokenizer, prompts, out_path, cfg, progress=progress,
            inputs_id=identity,
        )
        return stats if runtime.is_rank_zero else None


def _tokenizer(cfg: Config) -> Tokenizer:
    tokenizer = build_tokenizer(cfg.data)
    check_tokenizer_fits_model(tokenizer, cfg.model)
    return tokenizer
