"""Data-parallel micro-batch sampling with a seeded per-epoch shuffle and exact resumption.

Sample order is fixed globally, independent of the data-parallel size: epoch e is a permutation
of the samples drawn from ``(seed, e)``; global batch j of the epoch is positions
``[j·G, (j+1)·G)`` of it (G = global batch size); DP rank r takes the r-th contiguous slice of
G / dp_size samples and splits it into micro-batches of k. The samples left over after the last
full global batch of an epoch are not used that epoch (every micro-batch has exactly k samples,
SCIR_SPEC §4); a new permutation next epoch uses them.

``consumed_samples`` counts samples of all DP ranks (as in Megatron), always whole global
batches, so a run resumed with it continues on exactly the next global batch, even with a
different data-parallel size.
"""

from __future__ import annotations

from collections.abc import Iterator

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

    def __len__(self) -> int:
        return max(self.num_steps - self.start_step, 0) * self.micro_batches_per_step

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.g // self.dp_size
        order, epoch = None, -1
        for step in range(self.start_step, self.num_steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self.epoch_order(epoch)
            start = (step % self.steps_per_epoch) * self.g + self.dp_rank * per_rank
            mine = order[start : start + per_rank]
            for m in range(0, per_rank, self.k):
                yield mine[m : m + self.k].tolist()
