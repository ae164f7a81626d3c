"""The SCIR training step for Megatron-Core's pipeline schedules (SCIR_SPEC §9).

A micro-batch of k pairs is one fixed-shape batch ``[B, S]`` whose rows are given by
:class:`~megatron_scir.data.layout.MicroBatchLayout`: y1 policy rows, y2 policy rows, then the
judge rows. Every pipeline stage runs the transformer over the whole batch; the last stage then

1. applies the output layer to the 2k policy rows **at their response positions only**, in
   chunks recomputed in backward, and reduces the vocab-parallel logits to response log-probs
   ``[2k]`` (:func:`policy_sequence_logps`);
2. if the loss mode reads the judge, applies the output layer to the judge rows **at the verdict
   position only**, ``[J, V/tp]``, and reads the full-vocabulary log-probs of the verdict/score
   tokens ``[J, K]`` (:func:`judge_candidate_logps`), which the judge format turns into log-odds;
3. calls the loss of ``scir.mode`` from :data:`megatron_scir.losses.LOSS_MODES`.

The loss function returns Megatron's 2-tuple ``(loss, metrics)``: the schedule divides the loss
by the number of micro-batches and DDP averages gradients over data-parallel ranks, so with
per-micro-batch losses normalised by k (``scir.pref_normalization=pairs``) the optimised
quantity is exactly the global-batch mean, whatever the TP/PP/DP layout. (The 3-tuple form
would divide by a token count, which is not how SCIR normalises.)

Process groups are passed in explicitly (``tp_group=``, ``dp_group=``, ``pp_group=``); nothing
here reads Megatron's global parallel state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from megatron_scir.config import Config
from megatron_scir.config.schema import TrainConfig
from megatron_scir.data.judges import JudgeFormat, judge_format
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.losses import LossModeSpec, LossOptions, PairTensors, loss_mode
from megatron_scir.losses.preference import metric
from megatron_scir.parallel.reductions import reduce_metrics
from megatron_scir.parallel.vocab_parallel import (
    chunked_output_log_probs,
    vocab_parallel_candidate_log_probs,
)
from megatron_scir.rewards import verdict_mass

__all__ = [
    "policy_sequence_logps",
    "response_token_logps",
    "judge_candidate_logps",
    "last_stage_outputs",
    "make_forward_step",
    "make_reference_forward_step",
    "packed_seq_params",
    "step_metrics",
]

Batch = dict[str, torch.Tensor]
DEFAULT_LOGPROB_CHUNK = TrainConfig.logprob_chunk_size  # the schema's default


def policy_sequence_logps(
    head,
    rows: slice,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    tp_group: dist.ProcessGroup | None,
    vocab_size: int,
    chunk_size: int = DEFAULT_LOGPROB_CHUNK,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Response log-probs of the policy rows, from the output layer at response positions only.

    The prompt's and the padding's logits are never used, so they are never made: the hidden
    states at the response positions (``loss_mask``) go through the output layer
    ``chunk_size`` positions at a time, recomputed in backward
    (:func:`~megatron_scir.parallel.vocab_parallel.chunked_output_log_probs`). The head's
    largest tensor is ``[chunk_size, V/tp]`` float32, not ``[rows, s, V/tp]``.

    Args:
        head: the last stage's ``megatron_scir.models.OutputHead``.
        rows: the policy rows (sequences) of the batch.
        labels: next-token ids: ``[len(rows), s]`` (padded), or the packed row ``[1, T]``.
        loss_mask: 1.0 on response tokens, the shape of ``labels`` (packed: only the policy
            sequences have any).
        tp_group: the tensor-parallel group the vocabulary is split over (``None``: no TP).
        vocab_size: the tokenizer's vocabulary (padded ids get no probability).
        chunk_size: response positions per output-layer chunk (``train.logprob_chunk_size``).
        cu_seqlens: the packed form's sequence boundaries ``[B + 1]``; ``None``: padded rows.

    Returns:
        ``[len(rows)]`` float32 ``log πθ(y|x)``, identical on every TP rank.
    """
    return response_token_logps(
        head,
        rows,
        labels,
        loss_mask,
        tp_group=tp_group,
        vocab_size=vocab_size,
        chunk_size=chunk_size,
        cu_seqlens=cu_seqlens,
    ).sum(dim=-1)


def response_token_logps(
    head,
    rows: slice,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    tp_group: dist.ProcessGroup | None,
    vocab_size: int,
    chunk_size: int = DEFAULT_LOGPROB_CHUNK,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[len(rows), s]`` float32 log-probs of the labels where ``loss_mask`` is set, 0 elsewhere,
    from the output layer at those positions only, ``chunk_size`` at a time (recomputed in
    backward). Packed (``cu_seqlens``): ``s`` is the longest of the ``rows`` sequences and column
    t is position t of each sequence. Shared by the preference losses and the SFT step."""
    line, positions = (loss_mask > 0).nonzero(as_tuple=True)
    if cu_seqlens is None:
        batch_rows, sequence, offset = rows.start + line, line, positions
        shape = loss_mask.shape
    else:  # one packed row: a position's sequence is the last boundary at or before it
        batch_rows = line
        index = torch.searchsorted(cu_seqlens[1:], positions.to(cu_seqlens.dtype), right=True)
        sequence, offset = index - rows.start, positions - cu_seqlens[index]
        lengths = cu_seqlens[rows.start + 1 : rows.stop + 1] - cu_seqlens[rows.start : rows.stop]
        shape = (rows.stop - rows.start, int(lengths.max()))
    token_logps = chunked_output_log_probs(
        head.hidden_at(batch_rows, positions),
        head.output_weight,
        labels[line, positions],
        tp_group=tp_group,
        vocab_size=vocab_size,
        chunk_size=chunk_size,
    )
    per_position = torch.zeros(shape, dtype=torch.float32, device=loss_mask.device)
    return per_position.index_put((sequence, offset), token_logps)


def judge_candidate_logps(
    head,
    rows: torch.Tensor,
    positions: torch.Tensor,
    candidate_ids: torch.Tensor,
    *,
    tp_group: dist.ProcessGroup | None,
    vocab_size: int,
) -> torch.Tensor:
    """Verdict/score token log-probs of the judge rows at their verdict positions only.

    The output layer runs on ``[J, h]`` hidden states, never on every position of the judge
    sequences (SCIR_SPEC §9): the largest judge tensor here is ``[J, V/tp]``.

    Args:
        head: the last stage's ``megatron_scir.models.OutputHead``.
        rows: ``[J]`` batch rows of the judge sequences.
        positions: ``[J]`` the position in each row whose logits predict the verdict.
        candidate_ids: ``[K]`` verdict (pairwise: first-shown wins, second wins) or score ids.
        tp_group: the tensor-parallel group the vocabulary is split over (``None``: no TP).
        vocab_size: the tokenizer's vocabulary.

    Returns:
        ``[J, K]`` float32 full-vocabulary log-probs, identical on every TP rank.
    """
    return vocab_parallel_candidate_log_probs(
        head.logits_at(rows, positions), candidate_ids, tp_group=tp_group, vocab_size=vocab_size
    )


def last_stage_outputs(
    head,
    *,
    batch: Batch,
    layout: MicroBatchLayout,
    candidate_ids: torch.Tensor | None,
    tp_group: dist.ProcessGroup | None,
    vocab_size: int,
    chunk_size: int = DEFAULT_LOGPROB_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(policy_logps [2k], candidate_logps [J, K] | None)``: the judge rows are read only
    when ``candidate_ids`` are given (the loss mode reads the judge)."""
    policy, cu_seqlens = layout.policy_rows, batch.get("cu_seqlens")
    packed = cu_seqlens is not None
    policy_logps = policy_sequence_logps(
        head,
        policy,
        batch["labels"] if packed else batch["labels"][policy],
        batch["loss_mask"] if packed else batch["loss_mask"][policy],
        tp_group=tp_group,
        vocab_size=vocab_size,
        chunk_size=chunk_size,
        cu_seqlens=cu_seqlens,
    )
    if candidate_ids is None:
        return policy_logps, None
    device = batch["tokens"].device
    rows, positions = layout.judge_rows, batch["verdict_positions"]
    candidate_logps = judge_candidate_logps(
        head,
        # packed: every judge sequence is in row 0, its verdict position counted in that row
        torch.zeros_like(positions)
        if packed
        else torch.arange(rows.start, rows.stop, device=device),
        positions,
        candidate_ids if candidate_ids.device == device else candidate_ids.to(device),
        tp_group=tp_group,
        vocab_size=vocab_size,
    )
    return policy_logps, candidate_logps


def _batch_layout(layouts: Sequence[MicroBatchLayout], batch: Batch) -> MicroBatchLayout:
    """The layout of this micro-batch among the accepted ones, checked (SCIR_SPEC §9).

    The first layout is the loss mode's own and the one a mismatch is reported against.
    """
    rows = batch["cu_seqlens"].numel() - 1 if "cu_seqlens" in batch else batch["tokens"].size(0)
    layout = next((layout for layout in layouts if layout.num_rows == rows), layouts[0])
    layout.validate(batch)
    return layout


def _loss_func(
    mode: LossModeSpec,
    options: LossOptions,
    judge: JudgeFormat | None,
    batch: Batch,
    layout: MicroBatchLayout,
    outputs: tuple[torch.Tensor, torch.Tensor | None],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Megatron's loss function, last pipeline stage: ``(loss, {key: (sum, count)})``."""
    policy_logps, candidate_logps = outputs
    y1, y2 = layout.policy_side_rows(0), layout.policy_side_rows(1)
    ref_logps, lengths = batch["ref_logps"], batch["response_lengths"]
    pairs = PairTensors(
        policy_logps=(policy_logps[y1], policy_logps[y2]),
        ref_logps=(ref_logps[y1], ref_logps[y2]),
        pair_labels=batch.get("pair_labels"),
        response_lengths=(lengths[y1], lengths[y2]),
        # Fillers (pair_indices −1) only pad the last micro-batches of an epoch to k pairs.
        pair_mask=(batch["pair_indices"] >= 0) if "pair_indices" in batch else None,
        judge_logits=(
            None if candidate_logps is None else judge.log_odds(candidate_logps, layout.num_pairs)
        ),
    )
    loss, metrics = mode.loss(pairs, options)
    if candidate_logps is not None:
        metrics["judge/verdict_mass"] = metric(
            verdict_mass(candidate_logps).sum(), candidate_logps.size(0)
        )
    return loss, metrics


def make_forward_step(
    cfg: Config,
    candidate_ids: Sequence[int] | None,
    *,
    tp_group: dist.ProcessGroup | None,
) -> Callable[[Iterator[Batch], torch.nn.Module], tuple[Any, Callable]]:
    """Build ``forward_step(data_iterator, model)`` for ``get_forward_backward_func``.

    Args:
        cfg: the run's config; ``scir.mode`` picks the loss (``LOSS_MODES``), ``scir`` and
            ``judge`` give its options and the judge format, ``train.micro_batch_size`` the
            pairs per micro-batch, ``model.vocab_size`` the true vocabulary.
        candidate_ids: the judge's verdict ids (pairwise, ``judge.verdict_texts`` order) or score
            ids (pointwise, scores 0..K), from
            ``megatron_scir.data.judges.judge_format(cfg.judge).candidate_ids(chat)``; ``None``
            in the modes that read no judge.
        tp_group: the tensor-parallel group the vocabulary is split over; ``None`` for no
            tensor parallelism. Required: never read from Megatron's global state here.

    Returns:
        The forward-step callable. Each call takes the next micro-batch (a dict with the
        SCIR_SPEC §9 keys; in the labelled modes with or without judge rows, which are not read)
        from ``data_iterator``, runs ``model`` and returns ``(output, loss_func)``: on the last
        pipeline stage ``output`` is ``(policy_logps [2k], candidate_logps [J, K] | None)`` and
        ``loss_func(output)`` gives ``(loss, metrics)``; on other stages ``output`` is the hidden
        states to send on.
    """
    from megatron_scir.models import forward_last_stage

    mode, options, judge = loss_mode(cfg.scir.mode), LossOptions.from_config(cfg), None
    if mode.needs_judge:
        if not candidate_ids:
            raise ValueError(
                f"scir.mode={cfg.scir.mode} reads the judge: pass its verdict/score token ids"
            )
        judge = judge_format(cfg.judge)
    # The mode's own layout first; the labelled modes also take batches with judge rows.
    layouts = [MicroBatchLayout.from_config(cfg)]
    if not mode.needs_judge:
        layouts.append(MicroBatchLayout.from_config(cfg, with_judge=True))
    candidates = None if judge is None else torch.tensor(list(candidate_ids), dtype=torch.long)
    head_fn = partial(
        last_stage_outputs,
        tp_group=tp_group,
        vocab_size=cfg.model.vocab_size,
        chunk_size=cfg.train.logprob_chunk_size,
    )

    on_device: dict[torch.device, torch.Tensor] = {}  # the candidate ids, copied once

    def forward_step(data_iterator: Iterator[Batch], model: torch.nn.Module):
        batch = next(data_iterator)
        packed = packed_seq_params(batch)  # from the host copy: no device sync
        batch = _to_model_device(batch, model)
        layout = _batch_layout(layouts, batch)
        device = batch["tokens"].device
        if candidates is not None and device not in on_device:
            on_device[device] = candidates.to(device)
        output = forward_last_stage(
            model,
            batch["tokens"],
            batch["position_ids"],
            partial(head_fn, batch=batch, layout=layout, candidate_ids=on_device.get(device)),
            packed_seq_params=_on_device(packed, device),
        )
        return output, partial(_loss_func, mode, options, judge, batch, layout)

    return forward_step


def make_reference_forward_step(
    cfg: Config,
    candidate_ids: Sequence[int] | None,
    layout: MicroBatchLayout,
    *,
    tp_group: dist.ProcessGroup | None,
) -> Callable[[Iterator[Batch], torch.nn.Module], tuple[Any, Callable]]:
    """The training step's forward, read out as non-loss data (the reference pass, SCIR_SPEC §7.3).

    For ``get_forward_backward_func(..., forward_only=True, collect_non_loss_data=True)``. The
    last stage runs exactly what :func:`make_forward_step` runs (:func:`last_stage_outputs` on
    the same layout), so at the first training step πθ = πref bit for bit (SCIR_SPEC §4).

    Args:
        cfg: the run's config (``model.vocab_size``).
        candidate_ids: the judge's verdict/score ids; ``None``: the judge rows are not read.
        layout: the layout of the micro-batches (the training layout; ``ref_logps`` absent).
        tp_group: the tensor-parallel group the vocabulary is split over (``None``: no TP).

    Returns:
        ``forward_step(data_iterator, model) -> (output, loss_func)``; on the last stage
        ``loss_func(output, non_loss_data=True)`` gives ``{"pair_indices" [k], "policy_logps"
        [2k], "candidate_logps" [J, K] (only with candidate_ids)}``.
    """
    from megatron_scir.models import forward_last_stage

    candidates = (
        None if candidate_ids is None else torch.tensor(list(candidate_ids), dtype=torch.long)
    )
    head_fn = partial(
        last_stage_outputs,
        tp_group=tp_group,
        vocab_size=cfg.model.vocab_size,
        chunk_size=cfg.train.logprob_chunk_size,
    )

    def forward_step(data_iterator: Iterator[Batch], model: torch.nn.Module):
        batch = next(data_iterator)
        packed = packed_seq_params(batch)
        batch = _to_model_device(batch, model)
        layout.validate(batch, require_ref_logps=False)
        output = forward_last_stage(
            model,
            batch["tokens"],
            batch["position_ids"],
            partial(head_fn, batch=batch, layout=layout, candidate_ids=candidates),
            packed_seq_params=_on_device(packed, batch["tokens"].device),
        )
        return output, partial(_reference_outputs, batch["pair_indices"])

    return forward_step


def _reference_outputs(
    pair_indices: torch.Tensor,
    outputs: tuple[torch.Tensor, torch.Tensor | None],
    non_loss_data: bool = False,
) -> dict[str, torch.Tensor]:
    if not non_loss_data:
        raise ValueError("the reference step has no loss: run it with collect_non_loss_data=True")
    policy_logps, candidate_logps = outputs
    data = {"pair_indices": pair_indices, "policy_logps": policy_logps}
    if candidate_logps is not None:
        data["candidate_logps"] = candidate_logps
    return data


def packed_seq_params(batch: Batch):
    """Megatron's ``PackedSeqParams`` (THD) of a packed micro-batch, or None for padded rows.

    The boundaries are the batch's ``cu_seqlens`` plus the padding tail as one more sequence (it
    attends to itself only), so that they cover every token of the packed row.
    """
    from megatron.core.packed_seq_params import PackedSeqParams

    cu_seqlens = batch.get("cu_seqlens")
    if cu_seqlens is None:
        return None
    total = batch["tokens"].size(1)
    if int(cu_seqlens[-1]) != total:
        cu_seqlens = torch.cat([cu_seqlens, cu_seqlens.new_tensor([total])])
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_kv=cu_seqlens,
        max_seqlen_q=longest,
        max_seqlen_kv=longest,
    )


def _on_device(params, device: torch.device):
    if params is None or params.cu_seqlens_q.device == device:
        return params
    bounds = params.cu_seqlens_q.to(device, non_blocking=True)
    return dataclasses.replace(params, cu_seqlens_q=bounds, cu_seqlens_kv=bounds)


def _to_model_device(batch: Batch, model: torch.nn.Module) -> Batch:
    device = next(model.parameters()).device
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def step_metrics(
    losses_reduced: Sequence[dict[str, torch.Tensor]],
    *,
    dp_group: dist.ProcessGroup | None,
    pp_group: dist.ProcessGroup | None,
    is_last_stage: bool,
) -> dict[str, float]:
    """Global-batch metrics of one optimizer step, on every rank.

    Call on every rank after ``get_forward_backward_func()(...)``: the last pipeline stage
    reduces its per-micro-batch ``(sum, count)`` dicts over micro-batches and data-parallel
    ranks (:func:`megatron_scir.parallel.reductions.reduce_metrics`), then broadcasts the result
    over the pipeline group so that any rank (e.g. global rank 0, a first stage) can log it.

    Args:
        losses_reduced: what the schedule returned on this rank (empty on other stages).
        dp_group: the data-parallel group (``None``: no data parallelism).
        pp_group: the pipeline-parallel group (``None``: no pipeline parallelism).
        is_last_stage: whether this rank is on the last pipeline stage (holds the metrics).

    Returns:
        ``{key: global-batch mean}``, identical on every rank.
    """
    reduced = [reduce_metrics(losses_reduced, dp_group=dp_group) if is_last_stage else None]
    if pp_group is not None and dist.get_world_size(group=pp_group) > 1:
        last = dist.get_global_rank(pp_group, dist.get_world_size(group=pp_group) - 1)
        dist.broadcast_object_list(reduced, src=last, group=pp_group)
    return reduced[0]
