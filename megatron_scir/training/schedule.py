"""One call of Megatron-Core's pipeline schedule over a list of micro-batches.

Each micro-batch has its own shape (rows padded to its longest sequence, or one packed row;
SCIR_SPEC §9). Without pipelining and under 1F1B the schedule takes them as they are (1F1B
exchanges every activation's shape first: ``variable_seq_lengths``, set in
:func:`megatron_scir.models.gpt.transformer_config`). The interleaved schedule sends every
activation with one shape, so a call's micro-batches are first padded to their longest
(:func:`megatron_scir.data.pad_to_common_length`). The trainer, the reference pass, the GPU tie
check, the parity tests and the step benchmark all call :func:`run_schedule`, so that rule
lives here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from megatron_scir.data.collate import pad_to_common_length

__all__ = ["run_schedule"]


def run_schedule(
    forward_step: Callable,
    model: Sequence[torch.nn.Module],
    micro_batches: Sequence[dict[str, torch.Tensor]],
    *,
    forward_only: bool,
    collect_non_loss_data: bool = False,
) -> list[Any]:
    """``get_forward_backward_func()`` over ``micro_batches``: what the schedule returns (the
    loss functions' outputs, or the non-loss data), on the last pipeline stage.

    Args:
        forward_step: the schedule's ``forward_step_func``.
        model: the model chunks of this rank (more than one: interleaved PP).
        micro_batches: every micro-batch of the call, in order.
        forward_only: no backward (evaluation, the reference pass).
        collect_non_loss_data: return the forward step's non-loss data instead of losses.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func  # lazy: Megatron-Core

    interleaved = len(model) > 1
    batches = pad_to_common_length(micro_batches) if interleaved else list(micro_batches)
    rows, seq = batches[0]["tokens"].shape
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        # the interleaved schedule reads one iterator per model chunk
        data_iterator=[iter(batches) for _ in model] if interleaved else iter(batches),
        model=list(model),
        num_microbatches=len(batches),
        seq_length=seq,  # under 1F1B each micro-batch's own shape is exchanged
        micro_batch_size=rows,
        forward_only=forward_only,
        collect_non_loss_data=collect_non_loss_data,
    )
