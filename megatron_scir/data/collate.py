"""Collation into micro-batches: the SCIR layout and the SFT layout (SCIR_SPEC §9).

SCIR micro-batch of k pairs in the rows of a :class:`~megatron_scir.data.layout.MicroBatchLayout`,
in one of two forms. **Padded**: every tensor ``[B, S]``, each row right-padded to the
micro-batch's longest (rounded up to ``layout.pad_multiple``; attention is plain causal and padding
only follows content, so no attention mask is needed). **Packed**: the B sequences back to back
in one row ``[1, T]`` (Megatron's THD format), ``cu_seqlens`` ``[B + 1]`` int32 their boundaries,
the padding tail after ``cu_seqlens[-1]``; positions and labels restart in each sequence and
``verdict_positions`` index the packed row.

The tensors, their shapes and meaning: :class:`~megatron_scir.data.batch.MicroBatch`.

SFT micro-batch of b examples: :class:`~megatron_scir.data.batch.SftBatch`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from megatron_scir.data.batch import MicroBatch, SftBatch
from megatron_scir.data.encode import EncodedExample, EncodedPair
from megatron_scir.data.layout import MicroBatchLayout


def _next_token_labels(tokens: np.ndarray, pad_id: int) -> np.ndarray:
    labels = np.full_like(tokens, pad_id)
    labels[:, :-1] = tokens[:, 1:]
    return labels


def collate_pairs(
    pairs: Sequence[EncodedPair], *, layout: MicroBatchLayout, pad_id: int
) -> MicroBatch:
    """Stack k encoded pairs into one SCIR micro-batch (layout in the module docstring).

    Args:
        pairs: The k pairs of the micro-batch (``layout.num_pairs``), each encoded with at least
            ``layout.judge_rows_per_pair`` judge sequences.
        layout: Rows, padding and form (padded rows or one packed row). Without judge rows (the
            labelled ``dpo``/``srlm`` modes read no judge while training) the pairs' judge
            sequences are left out.
        pad_id: Padding id (also the label after each sequence's last token).
    """
    k = layout.num_pairs
    if len(pairs) != k:
        raise ValueError(f"{len(pairs)} pairs for a micro-batch layout of {k} pairs")
    sequences: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * layout.num_rows
    spans: dict[int, tuple[int, int]] = {}  # policy row → positions whose label is a response token
    response_lengths = np.zeros(layout.num_policy_rows, dtype=np.int64)
    verdicts = np.zeros(layout.num_judge_rows, dtype=np.int64)
    for i, pair in enumerate(pairs):
        p = len(pair.prompt)
        for side, response in enumerate(pair.responses):
            row = layout.policy_side_rows(side).start + i
            sequences[row] = np.concatenate([pair.prompt, response]).astype(np.int64)
            spans[row] = (p - 1, p + len(response) - 1)  # labels[t] = tokens[t+1]
            response_lengths[row] = len(response)
        for order, ids in enumerate(pair.judge[: layout.judge_rows_per_pair]):
            row = layout.judge_order_rows(order).start + i
            sequences[row] = np.asarray(ids, dtype=np.int64)
            verdicts[row - layout.num_policy_rows] = len(ids) - 1
    lengths = np.array([len(seq) for seq in sequences], dtype=np.int64)
    if layout.packed:
        starts = np.concatenate([[0], np.cumsum(lengths)])
        shape, offsets = (1, layout.padded_length(int(starts[-1]))), starts[:-1]
    else:
        shape, offsets = (layout.num_rows, layout.padded_length(int(lengths.max()))), None
    tokens = np.full(shape, pad_id, dtype=np.int64)
    labels = np.full(shape, pad_id, dtype=np.int64)
    loss_mask = np.zeros(shape, dtype=np.float32)
    position_ids = np.tile(np.arange(shape[1], dtype=np.int64), (shape[0], 1))
    for row, seq in enumerate(sequences):
        line, start = (0, int(offsets[row])) if layout.packed else (row, 0)
        end = start + len(seq)
        tokens[line, start:end] = seq
        labels[line, start : end - 1] = seq[1:]
        position_ids[line, start:end] = np.arange(len(seq))
        if row in spans:
            loss_mask[line, start + spans[row][0] : start + spans[row][1]] = 1.0
    if layout.packed:  # the padding tail counts from 0 too
        position_ids[0, starts[-1] :] = np.arange(shape[1] - starts[-1])
        verdicts = verdicts + starts[layout.num_policy_rows : -1]
    batch: MicroBatch = {
        "tokens": torch.from_numpy(tokens),
        "position_ids": torch.from_numpy(position_ids),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(loss_mask),
        "verdict_positions": torch.from_numpy(verdicts),
        "response_lengths": torch.from_numpy(response_lengths),
        "pair_labels": torch.tensor([pair.label for pair in pairs], dtype=torch.float32),
        "pair_indices": torch.tensor([pair.index for pair in pairs], dtype=torch.int64),
    }
    if layout.packed:
        batch["cu_seqlens"] = torch.from_numpy(starts.astype(np.int32))
    if pairs[0].ref_logps is not None:
        refs = [pair.ref_logps for pair in pairs]
        batch["ref_logps"] = torch.tensor(
            [r[0] for r in refs] + [r[1] for r in refs], dtype=torch.float32
        )
    if pairs[0].prev_logps is not None:
        prevs = [pair.prev_logps for pair in pairs]
        batch["prev_logps"] = torch.tensor(
            [r[0] for r in prevs] + [r[1] for r in prevs], dtype=torch.float32
        )
    return batch


def collate_examples(
    examples: Sequence[EncodedExample], *, pad_multiple: int, pad_id: int
) -> SftBatch:
    """Stack b SFT examples: ``tokens``/``position_ids``/``labels``/``loss_mask`` ``[b, S]``, S
    the longest example rounded up to a multiple of ``pad_multiple``.

    ``loss_mask`` is 1 where ``labels`` is a target token (the response and its EOS; for judge
    examples the verdict/score token and EOS).
    """
    longest = max(len(example.ids) for example in examples)
    seq_length = -(-longest // pad_multiple) * pad_multiple
    tokens = np.full((len(examples), seq_length), pad_id, dtype=np.int64)
    loss_mask = np.zeros(tokens.shape, dtype=np.float32)
    for row, example in enumerate(examples):
        n, p = len(example.ids), example.prompt_length
        tokens[row, :n] = example.ids
        loss_mask[row, p - 1 : n - 1] = 1.0
    return {
        "tokens": torch.from_numpy(tokens),
        "position_ids": torch.arange(seq_length, dtype=torch.int64).expand(len(tokens), -1).clone(),
        "labels": torch.from_numpy(_next_token_labels(tokens, pad_id)),
        "loss_mask": torch.from_numpy(loss_mask),
    }


def pad_to_common_length(batches: Sequence[MicroBatch]) -> list[MicroBatch]:
    """The micro-batches of one schedule call, extended to their longest ``S`` (or ``T``).

    Megatron's interleaved pipeline schedule sends every micro-batch's activations with one
    shape (its shape exchange, ``variable_seq_lengths``, only pairs up under the 1F1B schedule).
    The extension is padding after every sequence (packed: a longer padding tail), so no real
    position sees it: the token id there (0) never matters.
    """
    length = max(batch["tokens"].size(1) for batch in batches)
    return [_extend(batch, length) for batch in batches]


def _extend(batch: MicroBatch, length: int) -> MicroBatch:
    extra = length - batch["tokens"].size(1)
    if extra == 0:
        return batch
    out = dict(batch)
    for key in ("tokens", "labels", "loss_mask"):
        out[key] = torch.nn.functional.pad(batch[key], (0, extra))
    rows = batch["tokens"].size(0)
    positions = torch.arange(length, dtype=torch.int64).expand(rows, -1).clone()
    if "cu_seqlens" in batch:  # positions restart in each sequence and in the padding tail
        end = int(batch["cu_seqlens"][-1])
        positions[:, :end] = batch["position_ids"][:, :end]
        positions[:, end:] -= end
    out["position_ids"] = positions
    return out
