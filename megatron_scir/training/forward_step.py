"""The SCIR step for Megatron-Core's pipeline schedules: training and the reference pass.

One builder, :func:`_build_step`, makes ``forward_step(data_iterator, model)`` for
``get_forward_backward_func``. Each call takes the next
:class:`~megatron_scir.data.batch.MicroBatch` (rows in the
:class:`~megatron_scir.data.layout.MicroBatchLayout` the caller built once and hands in; padded
``[B, S]`` or one packed ``[1, T]`` row), checks it against that layout, runs every
pipeline stage over the whole batch, and on the last stage computes
:func:`~megatron_scir.training.logprob_heads.last_stage_outputs`: the policy rows' response
log-probs ``[2k]`` and, when the judge is read, the verdict/score log-probs ``[J, K]``. The two
steps differ only in what they do with those outputs:

- :func:`make_forward_step` (training): the loss of the mode's spec
  (:data:`megatron_scir.losses.LOSS_MODES`) returns Megatron's 2-tuple ``(loss, metrics)``: the
  schedule divides the loss by the number of micro-batches and DDP averages gradients over
  data-parallel ranks, so with per-micro-batch losses normalised by k
  (``scir.pref_normalization=pairs``) the optimised quantity is exactly the global-batch mean,
  whatever the TP/PP/DP layout. (The 3-tuple form would divide by a token count, which is not how
  SCIR normalises.)
- :func:`make_reference_forward_step` (the reference pass, SCIR_SPEC §7.3): the same outputs as
  non-loss data, so that at the first training step πθ = πref bit for bit (SCIR_SPEC §4).

Process groups are passed in explicitly (``tp_group=``); nothing here reads Megatron's global
parallel state. Metrics are reduced over DP and PP by
:func:`megatron_scir.parallel.reductions.step_metrics`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from megatron_scir.config import Config
from megatron_scir.config.choices import ImplicitReference
from megatron_scir.data.batch import MicroBatch
from megatron_scir.data.judges import JudgeFormat, judge_format
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.losses import LossModeSpec, LossOptions, PairTensors, loss_mode
from megatron_scir.losses.preference import metric
from megatron_scir.rewards import verdict_mass
from megatron_scir.training.logprob_heads import last_stage_outputs

__all__ = ["make_forward_step", "make_reference_forward_step", "packed_seq_params"]

ForwardStep = Callable[[Iterator[MicroBatch], torch.nn.Module], tuple[Any, Callable]]
# what the step does with the last stage's outputs: (batch, layout) -> the schedule's loss_func
OutputsFunction = Callable[[MicroBatch, MicroBatchLayout], Callable]


def make_forward_step(
    cfg: Config,
    layout: MicroBatchLayout,
    candidate_ids: Sequence[int] | None,
    *,
    tp_group: dist.ProcessGroup | None,
    mode: LossModeSpec | None = None,
) -> ForwardStep:
    """Build the training ``forward_step(data_iterator, model)``.

    Args:
        cfg: the run's config: ``scir`` and ``judge`` give the loss options and the judge format,
            ``model.vocab_size`` the true vocabulary, ``train.logprob_chunk_size`` the head.
        layout: the layout of every micro-batch this step gets (built once by the caller).
        candidate_ids: the judge's verdict ids (pairwise, ``judge.verdict_texts`` order) or score
            ids (pointwise, scores 0..K), ``ScirDataModule.verdict_token_ids``; ``None`` when
            the mode reads no judge.
        tp_group: the tensor-parallel group the vocabulary is split over; ``None`` for no
            tensor parallelism. Required: never read from Megatron's global state here.
        mode: the loss (default: ``scir.mode``'s spec). A mode that reads no judge also takes a
            layout with judge rows; they are then not read.

    Returns:
        The forward-step callable: on the last pipeline stage ``output`` is
        ``(policy_logps [2k], candidate_logps [J, K] | None)`` and ``loss_func(output)`` gives
        ``(loss, metrics)``; on other stages ``output`` is the hidden states to send on.
    """
    mode = mode or loss_mode(cfg.scir.mode)
    judge = None
    if mode.judge_rows:
        if not layout.with_judge:
            raise ValueError("this loss mode reads the judge: its layout needs judge rows")
        if not candidate_ids:
            raise ValueError("this loss mode reads the judge: pass its verdict/score token ids")
        judge = judge_format(cfg.judge)
    options = LossOptions.from_config(cfg)

    def loss_outputs(batch: MicroBatch, layout: MicroBatchLayout) -> Callable:
        return partial(_loss_func, mode, options, judge, batch, layout)

    return _build_step(
        cfg, layout, candidate_ids if judge else None, tp_group=tp_group, outputs=loss_outputs,
        require_prev_logps=(
            mode.selects_pairs and options.implicit_reference == ImplicitReference.PREVIOUS
        ),
    )


def make_reference_forward_step(
    cfg: Config,
    layout: MicroBatchLayout,
    candidate_ids: Sequence[int] | None,
    *,
    tp_group: dist.ProcessGroup | None,
) -> ForwardStep:
    """The training step's forward, read out as non-loss data (the reference pass).

    For ``get_forward_backward_func(..., forward_only=True, collect_non_loss_data=True)``; the
    micro-batches have no ``ref_logps`` yet.

    Args:
        cfg: the run's config (``model.vocab_size``, ``train.logprob_chunk_size``).
        layout: the reference pass's layout (``MicroBatchLayout.for_reference``).
        candidate_ids: the judge's verdict/score ids; ``None``: the judge rows are not read.
        tp_group: the tensor-parallel group the vocabulary is split over (``None``: no TP).

    Returns:
        ``forward_step(data_iterator, model) -> (output, loss_func)``; on the last stage
        ``loss_func(output, non_loss_data=True)`` gives ``{"pair_indices" [k], "policy_logps"
        [2k], "candidate_logps" [J, K] (only with candidate_ids)}``.
    """

    def reference_outputs(batch: MicroBatch, layout: MicroBatchLayout) -> Callable:
        return partial(_reference_outputs, batch["pair_indices"])

    return _build_step(
        cfg, layout, candidate_ids, tp_group=tp_group, outputs=reference_outputs,
        require_ref_logps=False,
    )


def _build_step(
    cfg: Config,
    layout: MicroBatchLayout,
    candidate_ids: Sequence[int] | None,
    *,
    tp_group: dist.ProcessGroup | None,
    outputs: OutputsFunction,
    require_ref_logps: bool = True,
    require_prev_logps: bool = False,
) -> ForwardStep:
    """The one step: batch to the model's device, checked against ``layout``, every stage run,
    :func:`last_stage_outputs` on the last one (judge rows read when ``candidate_ids`` are
    given), and ``outputs(batch, layout)`` as the schedule's ``loss_func``."""
    from megatron_scir.models import forward_last_stage  # lazy: builds on Megatron-Core

    if candidate_ids is not None and not layout.with_judge:
        raise ValueError("judge candidate ids given for a layout without judge rows")
    candidates = (
        None if candidate_ids is None else torch.tensor(list(candidate_ids), dtype=torch.long)
    )
    head_fn = partial(
        last_stage_outputs,
        layout=layout,
        tp_group=tp_group,
        vocab_size=cfg.model.vocab_size,
        chunk_size=cfg.train.logprob_chunk_size,
    )
    on_device: dict[torch.device, torch.Tensor] = {}  # the candidate ids, copied once

    def forward_step(data_iterator: Iterator[MicroBatch], model: torch.nn.Module):
        batch = next(data_iterator)
        packed = packed_seq_params(batch)  # from the host copy: no device sync
        batch = _to_model_device(batch, model)
        layout.validate(
            batch, require_ref_logps=require_ref_logps, require_prev_logps=require_prev_logps
        )
        device = batch["tokens"].device
        if candidates is not None and device not in on_device:
            on_device[device] = candidates.to(device)
        output = forward_last_stage(
            model,
            batch["tokens"],
            batch["position_ids"],
            partial(head_fn, batch=batch, candidate_ids=on_device.get(device)),
            packed_seq_params=_on_device(packed, device),
        )
        return output, outputs(batch, layout)

    return forward_step


def _loss_func(
    mode: LossModeSpec,
    options: LossOptions,
    judge: JudgeFormat | None,
    batch: MicroBatch,
    layout: MicroBatchLayout,
    outputs: tuple[torch.Tensor, torch.Tensor | None],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Megatron's loss function, last pipeline stage: ``(loss, {key: (sum, count)})``."""
    policy_logps, candidate_logps = outputs
    y1, y2 = layout.policy_side_rows(0), layout.policy_side_rows(1)
    ref_logps, lengths = batch["ref_logps"], batch["response_lengths"]
    prev_logps = batch.get("prev_logps")
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
        prev_logps=None if prev_logps is None else (prev_logps[y1], prev_logps[y2]),
    )
    loss, metrics = mode.loss(pairs, options)
    if candidate_logps is not None:
        metrics["judge/verdict_mass"] = metric(
            verdict_mass(candidate_logps).sum(), candidate_logps.size(0)
        )
    return loss, metrics


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


def packed_seq_params(batch: MicroBatch):
    """Megatron's ``PackedSeqParams`` (THD) of a packed micro-batch, or None for padded rows.

    The boundaries are the batch's ``cu_seqlens`` plus the padding tail as one more sequence (it
    attends to itself only), so that they cover every token of the packed row.
    """
    from megatron.core.packed_seq_params import PackedSeqParams  # lazy: Megatron-Core

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


def _to_model_device(batch: MicroBatch, model: torch.nn.Module) -> MicroBatch:
    device = next(model.parameters()).device
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
