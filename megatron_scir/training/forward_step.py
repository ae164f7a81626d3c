"""The SCIR training step for Megatron-Core's pipeline schedules (SCIR_SPEC §9).

A micro-batch of k pairs is one fixed-shape batch ``[B, S]`` (rows: y1 policy rows, y2 policy
rows, then the judge rows; see :func:`judge_rows_per_pair`). Every pipeline stage runs the
transformer over the whole batch; the last stage then

1. applies the output layer to the 2k policy rows and reduces their vocab-parallel logits to
   response log-probs ``[2k]`` (:func:`policy_sequence_logps`);
2. applies the output layer to the judge rows **at the verdict position only**, ``[J, V/tp]``,
   and reads the full-vocabulary log-probs of the verdict/score tokens ``[J, K]``
   (:func:`judge_candidate_logps`);
3. calls :func:`megatron_scir.losses.scir_loss` (or the ``dpo``/``srlm`` labelled loss).

The loss function returns Megatron's 2-tuple ``(loss, metrics)``: the schedule divides the loss
by the number of micro-batches and DDP averages gradients over data-parallel ranks, so with
per-micro-batch losses normalised by k (``scir.pref_normalization=pairs``) the optimised
quantity is exactly the global-batch mean, whatever the TP/PP/DP layout. (The 3-tuple form
would divide by a token count, which is not how SCIR normalises.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from megatron_scir.config import Config
from megatron_scir.losses import labelled_pair_loss, scir_loss
from megatron_scir.losses.preference import metric
from megatron_scir.parallel.reductions import reduce_metrics
from megatron_scir.parallel.vocab_parallel import (
    vocab_parallel_candidate_log_probs,
    vocab_parallel_log_probs,
)
from megatron_scir.rewards import (
    expected_scores,
    pairwise_log_odds,
    pointwise_log_odds,
    sequence_logps,
    verdict_mass,
)

__all__ = [
    "judge_rows_per_pair",
    "policy_sequence_logps",
    "judge_candidate_logps",
    "make_forward_step",
    "step_metrics",
]

Batch = dict[str, torch.Tensor]


def judge_rows_per_pair(cfg: Config) -> int:
    """Judge sequences per pair in a micro-batch (SCIR_SPEC §9).

    Two for pairwise judging with position debiasing (both orders) and for pointwise judging
    (one per response), one for pairwise with ``position_debias=none``. The labelled modes
    (``dpo``, ``srlm``) read no judge and also accept micro-batches without judge rows.
    """
    from megatron_scir.data.encode import judge_row_count

    return judge_row_count(cfg.judge.kind, cfg.scir.position_debias)


def policy_sequence_logps(
    head,
    rows: slice,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    tp_group: dist.ProcessGroup | None,
    vocab_size: int,
) -> torch.Tensor:
    """Response log-probs of the policy rows, from the vocab-parallel logits of every position.

    Args:
        head: the last stage's ``megatron_scir.models.OutputHead``.
        rows: the policy rows of the batch.
        labels: ``[len(rows), s]`` next-token ids.
        loss_mask: ``[len(rows), s]`` 1.0 on response tokens.
        tp_group: the tensor-parallel group the vocabulary is split over.
        vocab_size: the tokenizer's vocabulary (padded ids get no probability).

    Returns:
        ``[len(rows)]`` float32 ``log πθ(y|x)``, identical on every TP rank.
    """
    token_logps = vocab_parallel_log_probs(
        head.logits(rows), labels, tp_group=tp_group, vocab_size=vocab_size
    )
    return sequence_logps(token_logps, loss_mask)


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
        tp_group: the tensor-parallel group the vocabulary is split over.
        vocab_size: the tokenizer's vocabulary.

    Returns:
        ``[J, K]`` float32 full-vocabulary log-probs, identical on every TP rank.
    """
    return vocab_parallel_candidate_log_probs(
        head.logits_at(rows, positions), candidate_ids, tp_group=tp_group, vocab_size=vocab_size
    )


def _num_judge_rows(cfg: Config, batch: Batch) -> int:
    """Judge rows of this micro-batch, after checking it has the SCIR_SPEC §9 layout."""
    k = cfg.train.micro_batch_size
    judge_rows = judge_rows_per_pair(cfg) * k
    tokens = batch["tokens"]
    if cfg.scir.mode != "scir" and tokens.size(0) == 2 * k:
        judge_rows = 0  # the labelled modes do not need judge rows
    problems = []
    if tokens.dim() != 2 or tokens.size(0) != 2 * k + judge_rows:
        problems.append(f"tokens {tuple(tokens.shape)}: expected [{2 * k + judge_rows}, S]")
    sizes = {
        "ref_logps": 2 * k,
        "response_lengths": 2 * k,
        "pair_labels": k,
        "verdict_positions": judge_rows,
    }
    problems += [
        f"{key} has {batch[key].numel()} entries: expected {size}"
        for key, size in sizes.items()
        if key in batch and batch[key].numel() != size
    ]
    if "ref_logps" not in batch:
        problems.append("ref_logps missing: run the reference pass first (SCIR_SPEC §7.3)")
    if problems:
        raise ValueError(
            f"micro-batch does not match the SCIR layout for k={k} pairs and {judge_rows} judge "
            f"rows (SCIR_SPEC §9; train.micro_batch_size, judge.kind, scir.position_debias): "
            + "; ".join(problems)
        )
    return judge_rows


def _judge_log_odds(
    cfg: Config, candidate_logps: torch.Tensor, num_pairs: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(judge_logits_12, judge_logits_21) from the judge rows' candidate log-probs."""
    k = num_pairs
    if cfg.judge.kind == "pointwise":
        scores = expected_scores(candidate_logps)
        return pointwise_log_odds(
            scores[:k], scores[k:], temperature=cfg.judge.score_temperature
        ), None
    log_odds = pairwise_log_odds(candidate_logps)
    if cfg.scir.position_debias == "none":
        return log_odds, None
    return log_odds[:k], log_odds[k:]


def _loss_func(
    cfg: Config, batch: Batch, outputs: tuple[torch.Tensor, torch.Tensor | None]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Megatron's loss function, last pipeline stage: ``(loss, {key: (sum, count)})``."""
    policy_logps, candidate_logps = outputs
    k = cfg.train.micro_batch_size
    s = cfg.scir
    ref_logps = batch["ref_logps"]
    lengths = batch["response_lengths"]
    common = dict(
        beta=s.beta,
        pref_loss=s.pref_loss,
        pref_normalization=s.pref_normalization,
        length_normalize=s.length_normalize,
        response_lengths=(lengths[:k], lengths[k:]),
        sft_weight=s.sft_weight,
        # Fillers (pair_indices −1) only pad the last micro-batches of an epoch to k pairs.
        pair_mask=(batch["pair_indices"] >= 0) if "pair_indices" in batch else None,
    )
    logps = (policy_logps[:k], policy_logps[k:], ref_logps[:k], ref_logps[k:])
    if s.mode != "scir":
        return labelled_pair_loss(*logps, batch["pair_labels"], **common)
    judge_12, judge_21 = _judge_log_odds(cfg, candidate_logps, k)
    loss, metrics = scir_loss(
        *logps,
        judge_12,
        judge_21,
        consistency_weight=s.consistency_weight,
        confidence_weight=s.confidence_weight,
        divergence=s.divergence,
        position_debias=s.position_debias,
        consistency_grad=s.consistency_grad,
        margin=s.margin,
        tie_eps=s.tie_eps,
        gold_labels=batch.get("pair_labels"),
        **common,
    )
    metrics["judge/verdict_mass"] = metric(
        verdict_mass(candidate_logps).sum(), candidate_logps.size(0)
    )
    return loss, metrics


def make_forward_step(
    cfg: Config,
    candidate_ids: Sequence[int] | None,
    *,
    tp_group: dist.ProcessGroup | None = None,
) -> Callable[[Iterator[Batch], torch.nn.Module], tuple[Any, Callable]]:
    """Build ``forward_step(data_iterator, model)`` for ``get_forward_backward_func``.

    Args:
        cfg: the run's config; ``scir`` and ``judge`` give the objective, ``train.
            micro_batch_size`` the pairs per micro-batch, ``model.vocab_size`` the true
            vocabulary.
        candidate_ids: the judge's verdict ids (pairwise, ``judge.verdict_texts`` order) or score
            ids (pointwise, scores 0..K), from
            ``megatron_scir.rewards.templates.judge_candidate_token_ids``; ``None`` in the
            labelled modes.
        tp_group: the tensor-parallel group; ``None`` reads it from Megatron's ``parallel_state``
            (this is the training package, the bridge to the global state).

    Returns:
        The forward-step callable. Each call takes the next micro-batch (a dict with the
        SCIR_SPEC §9 keys) from ``data_iterator``, runs ``model`` and returns
        ``(output, loss_func)``: on the last pipeline stage ``output`` is
        ``(policy_logps [2k], candidate_logps [J, K] | None)`` and ``loss_func(output)`` gives
        ``(loss, metrics)``; on other stages ``output`` is the hidden states to send on.
    """
    from megatron_scir.models import forward_last_stage

    if tp_group is None:
        from megatron_scir.parallel import state

        tp_group = state.tp_group()
    if cfg.scir.mode == "scir" and not candidate_ids:
        raise ValueError("scir.mode=scir reads the judge: pass its verdict/score token ids")
    candidates = torch.tensor(list(candidate_ids or ()), dtype=torch.long)
    k, vocab_size = cfg.train.micro_batch_size, cfg.model.vocab_size

    def head_fn(head, batch: Batch, judge_rows: int):
        policy = slice(0, 2 * k)
        policy_logps = policy_sequence_logps(
            head,
            policy,
            batch["labels"][policy],
            batch["loss_mask"][policy],
            tp_group=tp_group,
            vocab_size=vocab_size,
        )
        if cfg.scir.mode != "scir":
            return policy_logps, None  # judge rows, if any, are not read in the labelled modes
        rows = torch.arange(2 * k, 2 * k + judge_rows, device=batch["tokens"].device)
        candidate_logps = judge_candidate_logps(
            head,
            rows,
            batch["verdict_positions"],
            candidates.to(rows.device),
            tp_group=tp_group,
            vocab_size=vocab_size,
        )
        return policy_logps, candidate_logps

    def forward_step(data_iterator: Iterator[Batch], model: torch.nn.Module):
        batch = _to_model_device(next(data_iterator), model)
        judge_rows = _num_judge_rows(cfg, batch)
        output = forward_last_stage(
            model,
            batch["tokens"],
            batch["position_ids"],
            partial(head_fn, batch=batch, judge_rows=judge_rows),
        )
        return output, partial(_loss_func, cfg, batch)

    return forward_step


def _to_model_device(batch: Batch, model: torch.nn.Module) -> Batch:
    device = next(model.parameters()).device
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def step_metrics(
    losses_reduced: Sequence[dict[str, torch.Tensor]],
    *,
    dp_group: dist.ProcessGroup | None = None,
    pp_group: dist.ProcessGroup | None = None,
) -> dict[str, float]:
    """Global-batch metrics of one optimizer step, on every rank.

    Call on every rank after ``get_forward_backward_func()(...)``: the last pipeline stage
    reduces its per-micro-batch ``(sum, count)`` dicts over micro-batches and data-parallel
    ranks (:func:`megatron_scir.parallel.reductions.reduce_metrics`), then broadcasts the result
    over the pipeline group so that any rank (e.g. global rank 0, a first stage) can log it.

    Args:
        losses_reduced: what the schedule returned on this rank (empty on other stages).
        dp_group, pp_group: ``None`` reads them from Megatron's ``parallel_state``.

    Returns:
        ``{key: global-batch mean}``, identical on every rank.
    """
    from megatron_scir.parallel import state

    dp_group = state.dp_group() if dp_group is None else dp_group
    pp_group = state.pp_group() if pp_group is None else pp_group
    reduced = [reduce_metrics(losses_reduced, dp_group=dp_group) if state.is_last_stage() else None]
    if dist.get_world_size(group=pp_group) > 1:
        last = dist.get_global_rank(pp_group, dist.get_world_size(group=pp_group) - 1)
        dist.broadcast_object_list(reduced, src=last, group=pp_group)
    return reduced[0]
