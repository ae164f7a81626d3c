"""Random SCIR micro-batches in the SCIR_SPEC §9 layout, for tests and examples.

The data package builds real micro-batches from pairs and judge templates; the training step
only relies on the layout (:class:`~megatron_scir.data.layout.MicroBatchLayout`), so tests can
drive it with random token ids of the same shape: k pairs → rows ``[0:k]`` policy [x‖y1],
``[k:2k]`` policy [x‖y2], then the judge rows of the configured judge format, all
``seq_length`` tokens, right-padded.
"""

from __future__ import annotations

import torch

from megatron_scir.config import Config
from megatron_scir.data.layout import MicroBatchLayout


def random_scir_batch(
    cfg: Config, *, seq_length: int, generator: torch.Generator, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """One micro-batch of ``cfg.train.micro_batch_size`` pairs with random tokens.

    The batch always has the judge rows of ``cfg.judge`` (also in the labelled modes, whose
    forward step accepts and ignores them). Prompts take 4–12 tokens and responses 4–16 (shared
    prompt within a pair); judge rows end at a random verdict position in the second half of the
    sequence. ``ref_logps`` are zeros (callers set them), ``pair_labels`` a mix of 1, 0 and −1.

    Args:
        cfg: the run config (``train.micro_batch_size``, ``model.vocab_size``, ``judge``).
        seq_length: S (at least 32), whatever the config's budgets.
        generator: the random source.
        pad_id: the padding id after each sequence.

    Returns:
        The SCIR_SPEC §9 dict: ``tokens``, ``position_ids``, ``labels`` ``[B, S]`` int64,
        ``loss_mask`` ``[B, S]`` float32, ``verdict_positions`` ``[J]``, ``ref_logps`` ``[2k]``
        float32, ``response_lengths`` ``[2k]`` int64, ``pair_labels`` ``[k]`` float32,
        ``pair_indices`` ``[k]`` int64 (``0..k-1``: no filler pairs).
    """
    layout = MicroBatchLayout.from_config(cfg, with_judge=True)
    k, vocab, rows = layout.num_pairs, cfg.model.vocab_size, layout.num_rows
    if seq_length < 32:
        raise ValueError(f"seq_length={seq_length}: random SCIR batches need at least 32 tokens")
    tokens = torch.randint(0, vocab, (rows, seq_length + 1), generator=generator)
    loss_mask = torch.zeros(rows, seq_length)
    prompt_lengths = torch.randint(4, 13, (k,), generator=generator).repeat(2)
    response_lengths = torch.randint(4, 17, (layout.num_policy_rows,), generator=generator)
    for row in range(layout.num_policy_rows):
        end = int(prompt_lengths[row] + response_lengths[row])
        tokens[row, end:] = pad_id
        # labels[t] = tokens[t + 1]: the response tokens are predicted at [prompt − 1, end − 1).
        loss_mask[row, int(prompt_lengths[row]) - 1 : end - 1] = 1.0
    verdict_positions = torch.randint(
        seq_length // 2, seq_length, (layout.num_judge_rows,), generator=generator
    )
    for index, position in enumerate(verdict_positions.tolist()):
        tokens[layout.judge_rows.start + index, position + 1 :] = pad_id
    return {
        "tokens": tokens[:, :-1].contiguous(),
        "labels": tokens[:, 1:].contiguous(),
        "position_ids": torch.arange(seq_length).expand(rows, seq_length).contiguous(),
        "loss_mask": loss_mask,
        "verdict_positions": verdict_positions,
        "ref_logps": torch.zeros(layout.num_policy_rows),
        "response_lengths": response_lengths,
        "pair_labels": torch.tensor([1.0, 0.0, -1.0]).repeat(k)[:k],
        "pair_indices": torch.arange(k),
    }
