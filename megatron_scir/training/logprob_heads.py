"""The last pipeline stage's log-prob heads over a tensor-parallel vocabulary (SCIR_SPEC §9).

From the final hidden states (the ``OutputHead`` that ``models.forward_last_stage`` hands over):

- :func:`response_token_logps` / :func:`policy_sequence_logps`: the output layer **at response
  (target) positions only**, in chunks recomputed in backward, reduced to token or sequence
  log-probs (the policy rows; the SFT step's targets);
- :func:`judge_candidate_logps`: the output layer **at the verdict position only**, ``[J, V/tp]``,
  read as the full-vocabulary log-probs of the verdict/score tokens ``[J, K]``;
- :func:`last_stage_outputs`: both for one SCIR micro-batch in its layout.

Every result is identical on every TP rank. No Megatron import: the tensor-parallel group is
passed in (``tp_group=``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_scir.config.schema import TrainConfig
from megatron_scir.data.batch import MicroBatch
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.parallel.vocab_parallel import (
    chunked_output_log_probs,
    vocab_parallel_candidate_log_probs,
)

__all__ = [
    "DEFAULT_LOGPROB_CHUNK",
    "judge_candidate_logps",
    "last_stage_outputs",
    "policy_sequence_logps",
    "response_token_logps",
]

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
    batch: MicroBatch,
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
