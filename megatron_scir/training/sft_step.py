"""The seed stage's forward step (SRLM's IFT + EFT) for Megatron-Core's schedules.

A micro-batch of b examples (``megatron_scir.data.collate.collate_examples``) is trained with the
cross-entropy of its target tokens (``loss_mask``): the response and EOS of instruction examples,
the verdict/score token and EOS of judge examples. The loss of a micro-batch is its per-token
mean; Megatron's schedule averages micro-batches and DDP averages data-parallel ranks, as
Megatron-LM does without ``calculate_per_token_loss``. The metric ``loss/sft`` is the exact
per-token mean of the global batch (``(sum, count)`` over tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from megatron_scir.config import Config
from megatron_scir.losses.keys import LOSS_TOTAL
from megatron_scir.losses.preference import metric
from megatron_scir.training.logprob_heads import response_token_logps

Batch = dict[str, torch.Tensor]


def _loss_func(batch: Batch, token_logps: torch.Tensor):
    mask = batch["loss_mask"] > 0
    nll = torch.where(mask, -token_logps.float(), 0.0).sum()
    num_tokens = mask.sum()
    loss = nll / num_tokens.clamp(min=1)
    return loss, {"loss/sft": metric(nll, num_tokens), LOSS_TOTAL: metric(loss, 1)}


def make_sft_forward_step(
    cfg: Config, *, tp_group: dist.ProcessGroup | None
) -> Callable[[Iterator[Batch], torch.nn.Module], tuple[Any, Callable]]:
    """``forward_step(data_iterator, model)`` of the SFT stage for ``get_forward_backward_func``.

    Args:
        cfg: the run's config (``model.vocab_size``: padded ids get no probability).
        tp_group: the tensor-parallel group the vocabulary is split over (``None``: no TP).

    Returns:
        The forward-step callable: on the last pipeline stage the output is the ``[b, s]``
        float32 log-probs of the target labels (0 elsewhere) and ``loss_func`` gives
        ``(loss, metrics)``.
    """
    from megatron_scir.models import forward_last_stage

    vocab_size = cfg.model.vocab_size

    def head_fn(head, batch: Batch) -> torch.Tensor:
        # the output layer at the target positions only, in chunks (as the policy rows)
        rows = slice(0, batch["tokens"].size(0))
        return response_token_logps(
            head, rows, batch["labels"], batch["loss_mask"], tp_group=tp_group,
            vocab_size=vocab_size, chunk_size=cfg.train.logprob_chunk_size,
        )

    def forward_step(data_iterator: Iterator[Batch], model: torch.nn.Module):
        device = next(model.parameters()).device
        batch = {key: value.to(device) for key, value in next(data_iterator).items()}
        output = forward_last_stage(
            model, batch["tokens"], batch["position_ids"], partial(head_fn, batch=batch)
        )
        return output, partial(_loss_func, batch)

    return forward_step


def sft_stage_config(cfg: Config) -> Config:
    """``cfg`` for the seed SFT stage: ``train.sft_lr`` (when set) as the peak learning rate."""
    if cfg.train.sft_lr is None:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=cfg.train.sft_lr))
