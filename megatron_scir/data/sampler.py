"""Data-parallel micro-batch sampling with a seeded per-epoch shuffle and exact resumption.

Sample order is fixed globally, independent of the data-parallel size: epoch e is a permutation
of the samples drawn from ``(seed, e)``; global batch j of the epoch is positions
``[j·G, (j+1)·G)`` of it (G = global batch size). Its G samples are split into G / k
micro-batches of k (with ``lengths``: ordered longest first, so that pairs of similar length
share a micro-batch and its padding), and micro-batch m of the step goes to DP rank
``m % dp_size``. A micro-batch's samples therefore never depend on the data-parallel size (the
reference pass replays them, SCIR_SPEC §4). The samples left over after the last full global
batch of an epoch are not used that epoch (every micro-batch has exactly k samples); a new
permutation next epoch uses them.

``consumed_samples`` counts samples of all DP ranks (as in Megatron), always whole global
batches, so a run resumed with it continues on exactly the next global batch, even with a
different data-parallel size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from megatron_scir.data.errors import DataError


class MicroBatchSampler:
    """Yields this DP rank's micro-batches (lists of k sample indices), step after step.

    Args:
        num_samples: Samples in the dataset.
        micro_batch_size: k, samples per micro-batch.
        global_batch_size: G, samples per optimizer step over all DP ranks.
        dp_rank: This rank's data-parallel index.
        dp_size: Data-parallel world size.
        seed: Shuffle seed (``train.seed``).
        shuffle: Permute each epoch (``data.shuffle``); else file order every epoch.
        num_steps: Optimizer steps to yield in total, counted from the start of training.
        consumed_samples: Samples (all ranks) already consumed; a multiple of G.
        lengths: Per-sample lengths for length grouping (``data.group_by_length``): within each
            global batch, samples are ordered longest first (ties in epoch order) before they
            are split into micro-batches. ``None``: epoch order.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        micro_batch_size: int,
        global_batch_size: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        shuffle: bool,
        num_steps: int,
        consumed_samples: int = 0,
        lengths: Sequence[int] | None = None,
    ) -> None:
        if not 0 <= dp_rank < dp_size:
            raise DataError(f"dp_rank {dp_rank} is outside 0..{dp_size - 1}")
        if global_batch_size % (micro_batch_size * dp_size):
            raise DataError(
                f"train.global_batch_size ({global_batch_size}) must be a multiple of "
                f"train.micro_batch_size × data-parallel size ({micro_batch_size} × {dp_size})"
            )
        self.steps_per_epoch = num_samples // global_batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{num_samples} samples do not fill one global batch of "
                f"train.global_batch_size={global_batch_size}: add data or lower the batch size"
            )
        if consumed_samples % global_batch_size or consumed_samples < 0:
            raise DataError(
                f"consumed_samples {consumed_samples} is not a whole number of global batches "
                f"of {global_batch_size}"
            )
        self.num_samples, self.k, self.g = num_samples, micro_batch_size, global_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed, self.shuffle, self.num_steps = seed, shuffle, num_steps
        self.start_step = consumed_samples // global_batch_size
        if lengths is not None and len(lengths) != num_samples:
            raise DataError(f"{len(lengths)} lengths for {num_samples} samples")
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)

    @property
    def micro_batches_per_step(self) -> int:
        """Micro-batches each DP rank runs per optimizer step (gradient accumulation)."""
        return self.g // (self.k * self.dp_size)

    @property
    def num_dropped_per_epoch(self) -> int:
        """Samples left out of each epoch (they do not fill a global batch)."""
        return self.num_samples - self.steps_per_epoch * self.g

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch`` (the same on every rank)."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def micro_batches(self, samples: np.ndarray) -> list[list[int]]:
        """``samples`` (one global batch, in epoch order) as micro-batches of k, longest first
        with ``lengths``; a last partial micro-batch is kept as is."""
        if self.lengths is not None:
            samples = samples[np.argsort(-self.lengths[samples], kind="stable")]
        return [samples[m : m + self.k].tolist() for m in range(0, len(samples), self.k)]

    def epoch_micro_batches(self, epoch: int) -> tuple[list[list[int]], list[list[int]]]:
        """Every micro-batch of ``epoch`` on all ranks, step by step, and the samples left out
        of it (grouped the same way, the last micro-batch possibly partial)."""
        order = self.epoch_order(epoch)
        used = self.steps_per_epoch * self.g
        steps = [
            mb
            for start in range(0, used, self.g)
            for mb in self.micro_batches(order[start : start + self.g])
        ]
        return steps, self.micro_batches(order[used:])

    def __len__(self) -> int:
        return max(self.num_steps - self.start_step, 0) * self.micro_batches_per_step

    def __iter__(self) -> Iterator[list[int]]:
        order, epoch = None, -1
        for step in range(self.start_step, self.num_steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self.epoch_order(epoch)
            start = (step % self.steps_per_epoch) * self.g
            yield from self.micro_batches(order[start : start + self.g])[
                self.dp_rank :: self.dp_size
            ]
