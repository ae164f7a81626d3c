"""Collation into fixed-shape micro-batches: the SCIR layout and the SFT layout (SCIR_SPEC §9).

SCIR micro-batch of k pairs in the rows of a :class:`~megatron_scir.data.layout.MicroBatchLayout`,
every tensor right-padded to S (attention is plain causal; padding only follows content, so no
attention mask is needed):

    rows [0:k]    policy [x‖y1]        rows [k:2k]   policy [x‖y2]
    rows [2k:3k]  J(x, y1, y2) (pairwise) or J(x, y1) (pointwise)
    rows [3k:4k]  J(x, y2, y1) (pairwise, position_debias mean_prob/mean_logit) or J(x, y2)

    tokens             int64   [B, S]  pad id after each sequence
    position_ids       int64   [B, S]  0..S-1
    labels             int64   [B, S]  labels[:, t] = tokens[:, t+1]; last column = pad id
    loss_mask          float32 [B, S]  1 where labels[:, t] is a response token (EOS included) of
                                       a policy row; 0 on prompts, padding and judge rows
    verdict_positions  int64   [R]     per judge row: the position whose logits predict the
                                       verdict/score (the last token of the judge prompt)
    response_lengths   int64   [2k]    loss_mask.sum per policy row
    pair_labels        float32 [k]     1 if y1 ≻ y2, 0 if y2 ≻ y1, -1 unknown
    pair_indices       int64   [k]     index of each pair in the DataModule's pair list (-1 for
                                       a filler repeating a pair to fill the last micro-batch)
    ref_logps          float32 [2k]    log πref(y|x) of the y1 rows then the y2 rows (only when
                                       the pairs carry them)

SFT micro-batch of b examples: tokens, position_ids, labels, loss_mask, all [b, S].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from megatron_scir.data.encode import EncodedExample, EncodedPair
from megatron_scir.data.layout import MicroBatchLayout


def _next_token_labels(tokens: np.ndarray, pad_id: int) -> np.ndarray:
    labels = np.full_like(tokens, pad_id)
    labels[:, :-1] = tokens[:, 1:]
    return labels


def collate_pairs(
    pairs: Sequence[EncodedPair], *, layout: MicroBatchLayout, pad_id: int
) -> dict[str, torch.Tensor]:
    """Stack k encoded pairs into one SCIR micro-batch (layout in the module docstring).

    Args:
        pairs: The k pairs of the micro-batch (``layout.num_pairs``), each encoded with at least
            ``layout.judge_rows_per_pair`` judge sequences.
        layout: Rows and S. Without judge rows (``[2k, S]``: the labelled ``dpo``/``srlm``
            modes read no judge while training) the pairs' judge sequences are left out.
        pad_id: Right-padding id (also the labels' last column).
    """
    k, seq_length = layout.num_pairs, layout.seq_length
    if len(pairs) != k:
        raise ValueError(f"{len(pairs)} pairs for a micro-batch layout of {k} pairs")
    tokens = np.full((layout.num_rows, seq_length), pad_id, dtype=np.int64)
    loss_mask = np.zeros(tokens.shape, dtype=np.float32)
    response_lengths = np.zeros(layout.num_policy_rows, dtype=np.int64)
    verdict_positions = np.zeros(layout.num_judge_rows, dtype=np.int64)
    for i, pair in enumerate(pairs):
        p = len(pair.prompt)
        for side, response in enumerate(pair.responses):
            row, end = layout.policy_side_rows(side).start + i, p + len(response)
            tokens[row, :p] = pair.prompt
            tokens[row, p:end] = response
            loss_mask[row, p - 1 : end - 1] = 1.0  # labels[t] = tokens[t+1] is a response token
            response_lengths[row] = len(response)
        for order, ids in enumerate(pair.judge[: layout.judge_rows_per_pair]):
            row = layout.judge_order_rows(order).start + i
            tokens[row, : len(ids)] = ids
            verdict_positions[row - layout.num_policy_rows] = len(ids) - 1
    batch = {
        "tokens": torch.from_numpy(tokens),
        "position_ids": torch.arange(seq_length, dtype=torch.int64).expand(len(tokens), -1).clone(),
        "labels": torch.from_numpy(_next_token_labels(tokens, pad_id)),
        "loss_mask": torch.from_numpy(loss_mask),
        "verdict_positions": torch.from_numpy(verdict_positions),
        "response_lengths": torch.from_numpy(response_lengths),
        "pair_labels": torch.tensor([pair.label for pair in pairs], dtype=torch.float32),
        "pair_indices": torch.tensor([pair.index for pair in pairs], dtype=torch.int64),
    }
    if pairs[0].ref_logps is not None:
        refs = [pair.ref_logps for pair in pairs]
        batch["ref_logps"] = torch.tensor(
            [r[0] for r in refs] + [r[1] for r in refs], dtype=torch.float32
        )
    return batch


def collate_examples(
    examples: Sequence[EncodedExample], *, seq_length: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """Stack b SFT examples: ``tokens``/``position_ids``/``labels``/``loss_mask`` ``[b, S]``.

    ``loss_mask`` is 1 where ``labels`` is a target token (the response and its EOS; for judge
    examples the verdict/score token and EOS).
    """
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
