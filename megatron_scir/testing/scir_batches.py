"""Random SCIR micro-batches in the SCIR_SPEC §9 layout, for tests and examples.

The data package builds real micro-batches from pairs and judge templates; the training step
only relies on the layout, so tests can drive it with random token ids of the same shape:
k pairs → rows ``[0:k]`` policy [x‖y1], ``[k:2k]`` policy [x‖y2], then ``judge_rows_per_pair ·
k`` judge rows, all ``seq_length`` tokens, right-padded.
"""

from __future__ import annotations

import torch

from megatron_scir.config import Config


def random_scir_batch(
    cfg: Config, *, seq_length: int, generator: torch.Generator, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """One micro-batch of ``cfg.train.micro_batch_size`` pairs with random tokens.

    Prompts take 4–12 tokens and responses 4–16 (shared prompt within a pair); judge rows end at
    a random verdict position in the second half of the sequence. ``ref_logps`` are zeros
    (callers set them), ``pair_labels`` a mix of 1, 0 and −1.

    Returns:
        The SCIR_SPEC §9 dict: ``tokens``, ``position_ids``, ``labels`` ``[B, S]`` int64,
        ``loss_mask`` ``[B, S]`` float32, ``verdict_positions`` ``[J]``, ``ref_logps`` ``[2k]``
        float32, ``response_lengths`` ``[2k]`` int64, ``pair_labels`` ``[k]`` float32,
        ``pair_indices`` ``[k]`` int64 (``0..k-1``: no filler pairs).
    """
    from megatron_scir.training.forward_step import judge_rows_per_pair

    k, vocab = cfg.train.micro_batch_size, cfg.model.vocab_size
    num_judge = judge_rows_per_pair(cfg) * k
    rows = 2 * k + num_judge
    if seq_length < 32:
        raise ValueError(f"seq_length={seq_length}: random SCIR batches need at least 32 tokens")
    tokens = torch.randint(0, vocab, (rows, seq_length + 1), generator=generator)
    loss_mask = torch.zeros(rows, seq_length)
    prompt_lengths = torch.randint(4, 13, (k,), generator=generator).repeat(2)
    response_lengths = torch.randint(4, 17, (2 * k,), generator=generator)
    for row in range(2 * k):
        end = int(prompt_lengths[row] + response_lengths[row])
        tokens[row, end:] = pad_id
        # labels[t] = tokens[t + 1]: the response tokens are predicted at [prompt − 1, end − 1).
        loss_mask[row, int(prompt_lengths[row]) - 1 : end - 1] = 1.0
    verdict_positions = torch.randint(
        seq_length // 2, seq_length, (num_judge,), generator=generator
    )
    for index, position in enumerate(verdict_positions.tolist()):
        tokens[2 * k + index, position + 1 :] = pad_id
    return {
        "tokens": tokens[:, :-1].contiguous(),
        "labels": tokens[:, 1:].contiguous(),
        "position_ids": torch.arange(seq_length).expand(rows, seq_length).contiguous(),
        "loss_mask": loss_mask,
        "verdict_positions": verdict_positions,
        "ref_logps": torch.zeros(2 * k),
        "response_lengths": response_lengths,
        "pair_labels": torch.tensor([1.0, 0.0, -1.0]).repeat(k)[:k],
        "pair_indices": torch.arange(k),
    }
