"""The stages every command and the loop share: reference pass, training, consistency read-out.

Each stage builds its micro-batch layout once, from the loss mode's spec
(:data:`megatron_scir.losses.LOSS_MODES`), and hands it on: the DataModule collates into it, the
forward step checks every micro-batch against it, the reference pass replays the training
micro-batches in it. ``scir train`` / ``scir sft`` (:mod:`.jobs`), ``scir iterate`` and
``scir evaluate`` (:mod:`megatron_scir.iteration`) all call these.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_scir.checkpoint import tokenizer_fingerprint
from megatron_scir.config import Config
from megatron_scir.config.choices import LossMode
from megatron_scir.data import ScirDataModule, SftDataModule, Tokenizer, read_records
from megatron_scir.data.jsonl import write_records
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.losses import LossModeSpec, PairLabels, loss_mode
from megatron_scir.losses.keys import CONSISTENCY_RATE
from megatron_scir.parallel.runtime import Runtime
from megatron_scir.recipe.model import ModelSource, load_model
from megatron_scir.training.forward_step import make_forward_step
from megatron_scir.training.reference import ReferenceSummary, run_reference_pass
from megatron_scir.training.sft_step import make_sft_forward_step, sft_stage_config
from megatron_scir.training.trainer import TrainResult, evaluate, train

__all__ = ["Trained", "consistency_rate", "previous_logps", "reference_stage", "train_stage"]


@dataclass(frozen=True)
class Trained:
    """What :func:`train_stage` ran: the trainer's result, the trained chunks and the data."""

    result: TrainResult
    chunks: list[torch.nn.Module]
    data: ScirDataModule | SftDataModule


def reference_stage(
    runtime: Runtime,
    cfg: Config,
    tokenizer: Tokenizer,
    *,
    model: ModelSource,
    pairs: str | os.PathLike,
    out: str | os.PathLike,
    chunks: Sequence[torch.nn.Module] | None = None,
    mode: LossModeSpec | None = None,
    previous: ModelSource | None = None,
) -> ReferenceSummary:
    """log πref (and M_t's judge, and SRLM's labels, as ``mode`` says) of every pair into
    ``out`` (skipped when ``out`` is valid for these inputs).

    With ``previous`` (``scir.implicit_reference=previous``) a pass of M_{t−1} over the same
    pairs comes first: its log-probs go into the pairs as ``prev_logps_1/2``
    (``<out>.previous.jsonl``), which M_t's pass then reads and keeps.

    Args:
        runtime: the parallel runtime.
        cfg: the run's config, in the training layout.
        tokenizer: the run's tokenizer.
        model: what M_t is (its identity keys the output).
        pairs: the pairs JSONL.
        out: the pairs with reference fields.
        chunks: M_t's chunks when the caller holds them; else loaded from ``model``.
        mode: the loss mode whose training these pairs feed (default ``scir.mode``).
        previous: M_{t−1}, the implicit reward's reference (``scir.implicit_reference``).
    """
    mode = mode or loss_mode(cfg.scir.mode)
    if previous is not None:
        pairs = previous_logps(runtime, cfg, tokenizer, model=previous, pairs=pairs, out=out)
    # what the file is keyed by besides the pairs' SHA-256 and the config: the model's content
    # identity and the tokenizer's content fingerprint (one hasher: rank 0)
    inputs_id = runtime.on_rank_zero(lambda: model_inputs_id(cfg, model))
    chunks = load_model(cfg, model) if chunks is None else chunks
    return run_reference_pass(
        runtime,
        chunks,
        cfg,
        tokenizer,
        pairs,
        out,
        inputs_id=inputs_id,
        layout=MicroBatchLayout.for_training(cfg, mode),
        reference_layout=MicroBatchLayout.for_reference(cfg, mode),
        srlm_labels=mode.labels == PairLabels.JUDGE,
    )


def previous_logps(
    runtime: Runtime,
    cfg: Config,
    tokenizer: Tokenizer,
    *,
    model: ModelSource,
    pairs: str | os.PathLike,
    out: str | os.PathLike,
) -> Path:
    """``<out>.previous.jsonl``: the pairs with ``prev_logps_1/2`` = log π_{t−1} of each response.

    M_{t−1}'s reference pass over the pairs (policy rows only, ``<out>.previous.pass.jsonl``,
    skipped when valid for these inputs: M_{t−1}'s content identity is among them), then the
    pairs rewritten with its log-probs as ``prev_logps`` (atomically, global rank 0).
    """
    base = Path(out)
    pass_out = base.with_name(base.name + ".previous.pass.jsonl")
    merged = base.with_name(base.name + ".previous.jsonl")
    layout = MicroBatchLayout.from_config(cfg, with_judge=False)
    inputs_id = runtime.on_rank_zero(lambda: model_inputs_id(cfg, model))
    chunks = load_model(cfg, model)
    run_reference_pass(
        runtime, chunks, cfg, tokenizer, pairs, pass_out, inputs_id=inputs_id,
        layout=layout, reference_layout=layout,
    )
    del chunks
    gc.collect()

    def merge() -> None:
        records, _ = read_records(pass_out, "pairs")
        write_records(
            merged,
            (
                dataclasses.replace(
                    record,
                    prev_logps_1=record.ref_logps_1,
                    prev_logps_2=record.ref_logps_2,
                    ref_logps_1=None,
                    ref_logps_2=None,
                    ref_judge_logits_12=None,
                    ref_judge_logits_21=None,
                )
                for record in records
            ),
        )

    runtime.on_rank_zero(merge)
    return merged


def model_inputs_id(cfg: Config, model: ModelSource) -> str:
    """``<model identity>|tokenizer:<content fingerprint>``: the model and tokenizer a reference
    pass's file depends on, by content (the pass records the tokenizer's path and vocabulary
    size only; a tokenizer file replaced in place must recompute it)."""
    tokenizer = tokenizer_fingerprint(cfg.data) or cfg.data.tokenizer_path
    return f"{model.identity}|tokenizer:{tokenizer}"


def train_stage(
    runtime: Runtime,
    cfg: Config,
    tokenizer: Tokenizer,
    chunks: Sequence[torch.nn.Module],
    *,
    pairs: str | os.PathLike | None,
    save_dir: str | os.PathLike | None,
    log_dir: str | os.PathLike,
    iteration: int = 0,
    resume: bool = False,
    progress: bool | None = None,
    final_optimizer: bool = True,
    tracker=None,
) -> Trained:
    """Train ``chunks`` in place: on ``pairs`` (with reference log-probs) with ``scir.mode``,
    or, with ``pairs=None``, the seed SFT stage on ``data.seed_sft`` / ``data.seed_judge``
    (``train.sft_lr`` as the peak learning rate). ``final_optimizer`` and ``tracker``: see
    :func:`~megatron_scir.training.trainer.train`.

    Returns:
        The trainer's result (``preempted`` on SIGTERM/SIGUSR1 after saving), the chunks and
        the set-up DataModule.
    """
    ranks = dict(dp_rank=runtime.dp_rank, dp_size=runtime.dp_size)
    if pairs is None:
        cfg = sft_stage_config(cfg)
        # instruction and judge examples share the policy and judge budgets
        layout = MicroBatchLayout.from_config(cfg, with_judge=True)
        data = SftDataModule(cfg, tokenizer, layout=layout, **ranks)
        data.setup("fit")
        step = make_sft_forward_step(cfg, tp_group=runtime.tp_group)
    else:
        layout = MicroBatchLayout.for_training(cfg)
        data = ScirDataModule(cfg, tokenizer, layout=layout, train_path=pairs, **ranks)
        data.setup("fit")
        step = make_forward_step(cfg, layout, data.verdict_token_ids, tp_group=runtime.tp_group)
    result = train(
        runtime,
        cfg,
        chunks,
        data,
        step,
        save_dir=save_dir,
        log_dir=log_dir,
        iteration=iteration,
        resume=resume,
        progress=progress,
        final_optimizer=final_optimizer,
        tracker=tracker,
    )
    return Trained(result, list(chunks), data)


def consistency_rate(
    runtime: Runtime,
    cfg: Config,
    tokenizer: Tokenizer,
    chunks: Sequence[torch.nn.Module],
    pairs: str | os.PathLike,
) -> float:
    """SCIR's consistency rate (SCIR_SPEC §4) of ``chunks`` on ``pairs`` (forward only, every
    whole global batch), whatever mode trained them: the SCIR loss's metrics on batches with
    judge rows. NaN when the file holds less than one global batch."""
    scir = loss_mode(LossMode.SCIR)
    layout = MicroBatchLayout.for_training(cfg, scir)
    data = ScirDataModule(
        cfg, tokenizer, layout=layout, dp_rank=runtime.dp_rank, dp_size=runtime.dp_size,
        train_path=pairs, val_path=pairs,
    )
    data.setup("validate")
    loader = data.val_dataloader()
    if len(loader) == 0:
        return math.nan
    step = make_forward_step(
        cfg, layout, data.verdict_token_ids, tp_group=runtime.tp_group, mode=scir
    )
    return evaluate(runtime, chunks, list(loader), step)[CONSISTENCY_RATE]


def pairs_have_ref_logps(pairs: str | os.PathLike, field: str = "ref_logps_1") -> bool:
    """Whether the pairs file's first record carries ``field`` (a file that cannot be read says
    False: the reference pass then reports it with its file and line)."""
    try:
        with open(Path(pairs), encoding="utf-8") as fh:
            first = next((line for line in fh if line.strip()), "")
        return json.loads(first).get(field) is not None
    except (OSError, ValueError, AttributeError):
        return False
