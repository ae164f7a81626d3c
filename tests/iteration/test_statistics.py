"""The study's bootstrap over seeds and items (megatron_scir.iteration.statistics)."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_scir.iteration.statistics import bootstrap_mean, paired_difference


def test_a_constant_matrix_has_a_zero_width_interval():
    interval = bootstrap_mean(np.full((3, 50), 0.75))
    assert interval.mean == interval.low == interval.high == 0.75
    assert interval.format() == "0.750 [0.750, 0.750]"


def test_the_interval_of_a_binomial_accuracy_has_the_expected_width():
    rng = np.random.default_rng(1)
    scores = (rng.random((3, 121)) < 0.7).astype(float)
    interval = bootstrap_mean(scores)
    assert interval.low < interval.mean < interval.high
    # items dominate: ±1.96·sqrt(p(1−p)/363) ≈ ±0.047 (the seed level adds its own spread)
    assert 0.06 < interval.high - interval.low < 0.16
    # draws depend only on the seed: the same call gives the same interval
    assert bootstrap_mean(scores) == interval
    assert bootstrap_mean(scores, seed=7) != interval


def test_seeds_that_disagree_widen_the_interval():
    items = np.tile([1.0, 0.0], 60)
    agreeing = np.stack([items, items, items])
    disagreeing = np.stack([np.ones(120), np.zeros(120), items])  # same mean 0.5
    narrow, wide = bootstrap_mean(agreeing), bootstrap_mean(disagreeing)
    assert narrow.mean == wide.mean == 0.5
    assert wide.high - wide.low > 3 * (narrow.high - narrow.low)


def test_a_paired_difference_removes_what_the_methods_share():
    rng = np.random.default_rng(2)
    hard = rng.random((3, 121)) < 0.5  # items both methods get right or wrong together
    better = hard.copy()
    better[:, :12] = True  # one method also gets 12 more items right on every seed
    difference = paired_difference(better.astype(float), hard.astype(float))
    gained = (~hard[:, :12]).sum() / hard.size
    assert difference.mean == pytest.approx(gained)
    assert difference.low > 0 and difference.positive > 0.99
    # the same two methods compared unpaired overlap: their own intervals are far wider
    a, b = bootstrap_mean(better.astype(float)), bootstrap_mean(hard.astype(float))
    assert a.low < b.high
    same = paired_difference(hard.astype(float), hard.astype(float))
    assert same.mean == same.low == same.high == 0.0 and same.positive == 0.0


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match="seeds, items"):
        bootstrap_mean([1.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean([[1.0, float("nan")]])
    with pytest.raises(ValueError, match="equal shapes"):
        paired_difference(np.ones((3, 4)), np.ones((2, 4)))
