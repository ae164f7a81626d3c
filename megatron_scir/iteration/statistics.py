"""Intervals that can carry a claim: a bootstrap over seeds and evaluation items.

A study measures each (method, iteration) on S seeds and the same I evaluation items per seed
(the evaluate stage's ``item_scores.json``: 1 / 0 / ½ per item). Its accuracy is the mean of an
``[S, I]`` score matrix. The two sources of noise are the seed (which M_1, which samples, which
batches) and the finite item set, so a replicate of the bootstrap draws S seeds with replacement
and I items with replacement and averages the drawn rows and columns. One replicate draws the same
seeds and items for every method (the draws depend only on ``seed``, S and I), so a difference of
two methods is computed replicate by replicate: a *paired* comparison, which removes the
between-item and between-seed variance the two methods share.

Percentile intervals (2.5 % and 97.5 % of 2000 replicates by default). With a handful of seeds
the seed level of the bootstrap is coarse (3 seeds have 10 distinct resamples); the intervals say
how far the numbers could move with other seeds and items, not a significance test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_mean", "paired_difference"]

REPLICATES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap percentile interval.

    Attributes:
        mean: the mean of the score matrix (every seed and item once).
        low, high: the ``(1 − level)/2`` and ``(1 + level)/2`` percentiles of the replicates.
        positive: the share of replicates above 0 (a difference's direction; for a plain mean,
            the share of replicates above 0 as well).
    """

    mean: float
    low: float
    high: float
    positive: float

    def format(self, digits: int = 3) -> str:
        """``0.760 [0.712, 0.801]``."""
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _matrix(scores: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"scores must be a non-empty [seeds, items] matrix, got {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("scores must be finite (an item without a score has no place here)")
    return matrix


def bootstrap_mean(
    scores: Sequence[Sequence[float]] | np.ndarray,
    *,
    replicates: int = REPLICATES,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """The mean of a ``[seeds, items]`` score matrix with its two-level bootstrap interval.

    Args:
        scores: per seed (rows) and evaluation item (columns), the item's score.
        replicates: bootstrap replicates.
        level: the interval's coverage.
        seed: the draws' seed; equal seeds and shapes draw the same seeds and items (paired).
    """
    matrix = _matrix(scores)
    num_seeds, num_items = matrix.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(num_seeds, size=(replicates, num_seeds))
    item_draws = rng.integers(num_items, size=(replicates, num_items))
    # per seed and replicate, the mean over that replicate's items: [S, B]
    per_seed = matrix[:, item_draws].mean(axis=2)
    values = per_seed[seed_draws, np.arange(replicates)[:, None]].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return Interval(
        mean=float(matrix.mean()),
        low=float(low),
        high=float(high),
        positive=float((values > 0).mean()),
    )


def paired_difference(
    a: Sequence[Sequence[float]] | np.ndarray,
    b: Sequence[Sequence[float]] | np.ndarray,
    *,
    replicates: int = REPLICATES,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """Mean of ``a − b`` (same seeds, same items, aligned) with its bootstrap interval;
    ``positive`` is the share of replicates in which ``a`` scored higher."""
    a, b = _matrix(a), _matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"a paired comparison needs equal shapes, got {a.shape} and {b.shape}")
    return bootstrap_mean(a - b, replicates=replicates, level=level, seed=seed)
