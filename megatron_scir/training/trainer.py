"""The training loop: Megatron-Core's DDP, optimizer, LR schedule and pipeline schedules.

One loop serves every stage (the seed SFT stage and the ``scir`` / ``dpo`` / ``srlm`` modes): the
caller passes the DataModule (``ScirDataModule`` or ``SftDataModule``) and the matching forward
step (``make_forward_step`` or ``make_sft_forward_step``). Per optimizer step, on every rank::

    zero grads → run_schedule (get_forward_backward_func, one iterator per model chunk,
    G / (k·DP) micro-batches of B rows) → global metrics → grad norm → skip the update if the
    loss or the norm is NaN/inf, else clip + optimizer step + LR step → log → checkpoint

Checkpoints (``checkpoint.save/step_NNNNNNN``, every ``checkpoint.save_interval`` steps and at
the end, the newest ``checkpoint.keep_last`` kept) hold the model, the optimizer, the LR
scheduler, the data position, the skip counters and each rank's RNG states, so a resumed run
continues exactly where the checkpoint was written. With ``final_optimizer=False`` (the
self-rewarding loop: every iteration starts a fresh optimizer) the checkpoint of the last step
leaves the optimizer out, a third of the size under Adam (Megatron's ``--no-save-optim``, for
the final save only: a mid-run checkpoint still resumes exactly). SIGTERM/SIGUSR1 finish the
current step, save, and return a preempted result (the CLI exits with ``EXIT_PREEMPTED``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_scir.checkpoint import (
    CheckpointError,
    is_complete,
    latest_checkpoint,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from megatron_scir.config import Config
from megatron_scir.config.derived import micro_batches_per_step
from megatron_scir.config.errors import UserError
from megatron_scir.parallel.ddp import wrap_with_ddp
from megatron_scir.parallel.reductions import step_metrics
from megatron_scir.parallel.runtime import Runtime
from megatron_scir.training.metrics_log import (
    GRAD_NORM,
    LOSS_PREFIX,
    LR,
    SKIPPED_STEPS,
    STEP_SECONDS,
    TOKENS_PER_S,
    MetricsLog,
)
from megatron_scir.training.optimizer import build_optimizer, build_scheduler
from megatron_scir.training.rng import capture_rng_state, restore_rng_state
from megatron_scir.training.schedule import run_schedule
from megatron_scir.training.signals import StopRequest

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"


class TrainingDiverged(UserError):
    """``train.max_skipped_steps`` consecutive steps had a NaN/inf loss or gradient norm."""


@dataclass
class TrainState:
    """What the loop counts; stored in every checkpoint."""

    step: int = 0
    """Optimizer steps taken (skipped steps included: they consume their data)."""
    consumed_samples: int = 0
    """Samples (all DP ranks) consumed: the data position to resume from."""
    skipped_steps: int = 0
    """Steps skipped for a NaN/inf loss or gradient norm, in total."""
    consecutive_skips: int = 0
    """Skips since the last successful update."""


@dataclass(frozen=True)
class TrainResult:
    """How a call to :func:`train` ended."""

    state: TrainState
    preempted: bool
    """Stopped by SIGTERM/SIGUSR1 after saving ``checkpoint``."""
    checkpoint: Path | None
    """The last checkpoint written (None without ``checkpoint.save``)."""
    metrics: dict[str, float]
    """The last step's global metrics."""


def train(
    runtime: Runtime,
    cfg: Config,
    chunks: Sequence[torch.nn.Module],
    data,
    forward_step: Callable,
    *,
    save_dir: str | Path | None,
    log_dir: str | Path,
    iteration: int = 0,
    resume: bool = False,
    progress: bool | None = None,
    final_optimizer: bool = True,
    tracker=None,
) -> TrainResult:
    """Train ``chunks`` on ``data`` with ``forward_step`` for ``data.num_train_steps`` steps.

    The caller owns the parallel world (``runtime``) and builds the bare model chunks; the
    chunks are wrapped in Megatron DDP here and trained in place.

    Args:
        runtime: The parallel runtime.
        cfg: The run config (``train``, ``parallel``, ``checkpoint``, ``logging``).
        chunks: This rank's model chunks (several under interleaved PP).
        data: A set-up DataModule of this rank (``train_dataloader``, ``num_train_steps``,
            ``load_state_dict``, ``seq_length``).
        forward_step: ``forward_step(data_iterator, model)`` for Megatron's schedules.
        save_dir: Where checkpoints go (None: no checkpoints, no resume).
        log_dir: Where ``metrics.jsonl`` and TensorBoard events go.
        iteration: The self-rewarding iteration (stored in the checkpoints).
        resume: Continue from the newest complete checkpoint under ``save_dir``, if any.
        progress: Progress bar on rank 0 (default ``logging.progress``).
        final_optimizer: Keep the optimizer state in the checkpoint of the last step (False:
            weights, scheduler, data position and RNG states only; such a checkpoint resumes
            a run that has no step left, and nothing else).
        tracker: ``(Trackers, series)`` of :mod:`~megatron_scir.training.trackers` (rank 0):
            each step also goes to W&B / MLflow.

    Raises:
        TrainingDiverged: too many consecutive NaN/inf steps.
        CheckpointError: resuming from a checkpoint without optimizer state while steps remain.
    """
    model = wrap_with_ddp(list(chunks), cfg)
    optimizer = build_optimizer(cfg, model)
    num_steps = data.num_train_steps
    scheduler = build_scheduler(cfg, optimizer, num_steps)
    state = TrainState()
    if resume and save_dir is not None:
        state = _resume(Path(save_dir), model, optimizer, scheduler, data, cfg, num_steps)
    num_micro = micro_batches_per_step(cfg.train, runtime.dp_size)
    batches = iter(data.train_dataloader())
    show = cfg.logging.progress if progress is None else progress
    log = MetricsLog(
        log_dir,
        enabled=runtime.is_rank_zero,
        tensorboard=cfg.logging.tensorboard,
        progress=show,
        total_steps=num_steps,
        start_step=state.step,
        tracker=tracker,
    )
    checkpoint, metrics, preempted = None, {}, False
    try:
        with StopRequest() as stop:
            while state.step < num_steps:
                micro_batches = [next(batches) for _ in range(num_micro)]
                metrics = _train_step(
                    runtime, cfg, model, optimizer, scheduler, forward_step, micro_batches, state
                )
                state.step += 1
                state.consumed_samples += cfg.train.global_batch_size
                log.log(state.step, metrics)
                _check_divergence(state, cfg)
                preempted = stop.agreed()
                if save_dir is not None and (preempted or _save_due(state.step, num_steps, cfg)):
                    last = state.step == num_steps and not final_optimizer
                    checkpoint = _save(
                        Path(save_dir), runtime, cfg, model, None if last else optimizer,
                        scheduler, state, iteration,
                    )
                if preempted:
                    logger.warning("stop signal %s: saved step %d", stop.signal_name, state.step)
                    break
    finally:
        log.close()
    return TrainResult(dataclasses.replace(state), preempted, checkpoint, metrics)


def _run_schedule(
    runtime: Runtime,
    model: Sequence[torch.nn.Module],
    forward_step: Callable,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    *,
    forward_only: bool,
) -> dict[str, float]:
    """One pipeline-schedule call over the micro-batches; the global metrics."""
    losses = run_schedule(forward_step, model, micro_batches, forward_only=forward_only)
    return step_metrics(
        losses,
        dp_group=runtime.dp_group,
        pp_group=runtime.pp_group,
        is_last_stage=runtime.is_last_stage(),
    )


def _train_step(
    runtime, cfg, model, optimizer, scheduler, forward_step, micro_batches, state: TrainState
) -> dict[str, float]:
    """One optimizer step: forward/backward over the micro-batches, then the guarded update."""
    start = time.perf_counter()
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    metrics = _run_schedule(runtime, model, forward_step, micro_batches, forward_only=False)
    found_inf = optimizer.prepare_grads()  # fp16 loss-scale overflow
    grad_norm = float(optimizer.get_grad_norm())
    finite = not found_inf and math.isfinite(grad_norm)
    loss_terms = [v for k, v in metrics.items() if k.startswith(LOSS_PREFIX)]
    finite = finite and all(math.isfinite(v) for v in loss_terms)
    if finite:
        if cfg.train.clip_grad > 0:
            optimizer.clip_grad_norm(cfg.train.clip_grad)
        optimizer.step_with_ready_grads()
        scheduler.step(increment=1)
        state.consecutive_skips = 0
    else:
        state.skipped_steps += 1
        state.consecutive_skips += 1
        logger.warning("step %d: non-finite loss or gradient norm, update skipped", state.step + 1)
    seconds = time.perf_counter() - start
    tokens = sum(batch["tokens"].numel() for batch in micro_batches) * runtime.dp_size
    return {
        **metrics,
        GRAD_NORM: grad_norm,
        LR: float(optimizer.param_groups[0]["lr"]),
        SKIPPED_STEPS: state.skipped_steps,
        TOKENS_PER_S: tokens / seconds,
        STEP_SECONDS: seconds,
    }


def _check_divergence(state: TrainState, cfg: Config) -> None:
    limit = cfg.train.max_skipped_steps
    if state.consecutive_skips >= limit:
        raise TrainingDiverged(
            f"{state.consecutive_skips} consecutive steps had a NaN/inf loss or gradient norm, "
            f"the last at step {state.step} (train.max_skipped_steps={limit}): lower train.lr, "
            "check the data and the reference log-probs, or resume from an earlier checkpoint"
        )


def _save_due(step: int, num_steps: int, cfg: Config) -> bool:
    interval = cfg.checkpoint.save_interval
    return step == num_steps or (interval is not None and step % interval == 0)


def _save(save_dir, runtime, cfg, model, optimizer, scheduler, state, iteration) -> Path:
    path = save_dir / f"{CHECKPOINT_PREFIX}{state.step:07d}"
    save_checkpoint(
        path,
        model,
        cfg,
        iteration=iteration,
        step=state.step,
        extra_state={"train": dataclasses.asdict(state), "scheduler": scheduler.state_dict()},
        optimizer=optimizer,
        rank_state=capture_rng_state(),
        overwrite=True,
    )
    if runtime.is_rank_zero and cfg.checkpoint.keep_last is not None:
        _remove_old(save_dir, cfg.checkpoint.keep_last)
    torch.distributed.barrier()
    return path


def _remove_old(save_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints.

    Each one is first renamed out of the ``step_*`` namespace (atomic), then deleted: a kill in
    the middle of a deletion leaves a hidden ``.step_*.removing`` directory, swept next time,
    never a half-deleted ``step_*`` that no longer counts as complete and is never removed.
    """
    for leftover in save_dir.glob(f".{CHECKPOINT_PREFIX}*.removing"):
        shutil.rmtree(leftover, ignore_errors=True)
    done = sorted(p for p in save_dir.glob(f"{CHECKPOINT_PREFIX}*") if is_complete(p))
    for old in done[: max(len(done) - keep_last, 0)]:
        doomed = old.with_name(f".{old.name}.removing")
        old.rename(doomed)
        shutil.rmtree(doomed)


def _resume(save_dir, model, optimizer, scheduler, data, cfg, num_steps: int) -> TrainState:
    """Load the newest complete checkpoint under ``save_dir``; a fresh state without one.

    A checkpoint saved without the optimizer (the last step's, ``final_optimizer=False``) is
    loaded without it when it ends the run; with steps left it is refused."""
    latest = latest_checkpoint(save_dir)
    if latest is None:
        logger.info("no checkpoint under %s: starting from step 0", save_dir)
        return TrainState()
    metadata = read_metadata(latest)
    with_optimizer = "optimizer" in metadata.contents
    if not with_optimizer and metadata.step < num_steps:
        raise CheckpointError(
            f"checkpoint {latest} holds no optimizer state (the last checkpoint of a finished "
            f"run, step {metadata.step}) and this run has {num_steps} steps: continue from an "
            "earlier checkpoint of it, or start a new run from these weights (checkpoint.load)"
        )
    loaded = load_checkpoint(
        latest, model, cfg, optimizer=optimizer if with_optimizer else None, rank_state=True
    )
    state = TrainState(**loaded.extra_state["train"])
    scheduler.load_state_dict(loaded.extra_state["scheduler"])
    data.load_state_dict({"consumed_samples": state.consumed_samples})
    if loaded.rank_state is not None:
        restore_rng_state(loaded.rank_state)
    else:
        logger.warning("%s was written by another layout: RNG states not restored", latest)
    logger.info("resumed from %s (step %d)", latest, state.step)
    return state


@torch.no_grad()
def evaluate(
    runtime: Runtime,
    chunks: Sequence[torch.nn.Module],
    micro_batches: Sequence[dict[str, torch.Tensor]],
    forward_step: Callable,
) -> dict[str, float]:
    """Forward-only metrics of ``forward_step`` over this rank's ``micro_batches`` (held-out data).

    Collective; every rank of a replica passes the same micro-batches, DP ranks their own. The
    metrics are reduced like a training step's (``step_metrics``): the global mean of each.
    """
    return _run_schedule(runtime, chunks, forward_step, micro_batches, forward_only=True)
