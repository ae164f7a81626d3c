"""Reducing per-micro-batch ``(sum, count)`` metrics over micro-batches and data-parallel ranks.

Megatron's ``get_forward_backward_func`` returns, on the last pipeline stage, the list of
metric dicts the loss function produced, one per micro-batch. Every value here is a float32
``[2]`` tensor ``(sum, count)``; the global-batch mean of a metric is
``Σ_microbatches,dp sum / Σ_microbatches,dp count``, exact for any split.

- :func:`reduce_metrics`: the global means, on the ranks of the last pipeline stage.
- :func:`step_metrics`: the same, then broadcast over the pipeline group: one step's metrics
  on every rank.

torch.distributed only; nothing here imports Megatron-Core.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = ["reduce_metrics", "step_metrics"]

_SECOND_MOMENT = "_sqmean"
SECOND_MOMENT_CENTER = 0.5  # the `_sqmean` metrics are E[(p − ½)²] of probabilities


def reduce_metrics(
    per_microbatch: Sequence[dict[str, torch.Tensor]],
    *,
    dp_group: dist.ProcessGroup | None = None,
) -> dict[str, float]:
    """Global-batch means of ``(sum, count)`` metrics.

    Call on every rank of the last pipeline stage that holds the micro-batch results (all
    ranks of ``dp_group`` must call it, with the same keys). Other stages have no metrics and
    do not call it.

    Args:
        per_microbatch: one dict per micro-batch, each value a ``[2]`` tensor ``(sum, count)``
            (as returned by :func:`megatron_scir.losses.scir_loss` and the loss function of
            :mod:`megatron_scir.training.forward_step`).
        dp_group: the data-parallel group to sum over (``None``: this rank only).

    Returns:
        ``{key: mean}`` as Python floats, identical on every rank of ``dp_group``; a metric
        whose count is 0 over the whole global batch (e.g. ``reward/margin`` when no pair is
        consistent) is ``nan``: undefined, not zero. A key ``X_sqmean`` (the second moment
        about ½, E[(x − ½)²], of a probability) is reported as ``X_std`` =
        sqrt(E[(x − ½)²] − (E[x] − ½)²) when ``X_mean`` is present.
    """
    if not per_microbatch:
        return {}
    keys = sorted(per_microbatch[0])
    for index, metrics in enumerate(per_microbatch):
        if sorted(metrics) != keys:
            raise ValueError(
                f"micro-batch {index} reports metrics {sorted(metrics)}, micro-batch 0 {keys}: "
                "every micro-batch must report the same keys"
            )
    # One [num_keys, 2] float64 tensor, one all-reduce.
    totals = torch.stack(
        [torch.stack([metrics[key].double() for key in keys]) for metrics in per_microbatch]
    ).sum(dim=0)
    if dp_group is not None and dist.get_world_size(group=dp_group) > 1:
        dist.all_reduce(totals, group=dp_group)
    sums, counts = totals.unbind(dim=-1)
    means = torch.where(counts > 0, sums / counts.clamp(min=1), math.nan)
    # the step's one device → host copy (no .item() per key)
    return _moments_to_std(dict(zip(keys, means.tolist(), strict=True)))


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
    ranks (:func:`reduce_metrics`), then broadcasts the result over the pipeline group so that
    any rank (e.g. global rank 0, a first stage) can log it.

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


def _moments_to_std(means: dict[str, float]) -> dict[str, float]:
    reduced = {}
    for key, value in means.items():
        base = key[: -len(_SECOND_MOMENT)] if key.endswith(_SECOND_MOMENT) else None
        if base is not None and f"{base}_mean" in means:
            # second moment about ½ (these metrics are probabilities): well conditioned for
            # P near ½, where E[x²] − E[x]² in float32 sums would cancel to noise
            variance = value - (means[f"{base}_mean"] - SECOND_MOMENT_CENTER) ** 2
            # Rounding can leave a tiny negative variance for a constant metric.
            reduced[f"{base}_std"] = math.sqrt(max(variance, 0.0))
        else:
            reduced[key] = value
    return reduced
