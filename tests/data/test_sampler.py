"""Data-parallel micro-batch sampling: disjoint shards, seeded epochs, exact resumption."""

from __future__ import annotations

import pytest

from megatron_scir.data import DataError, MicroBatchSampler


def sampler(
    n=22, *, k=2, g=8, rank=0, dp=2, steps=None, consumed=0, shuffle=True, seed=3, lengths=None
):
    return MicroBatchSampler(
        n,
        micro_batch_size=k,
        global_batch_size=g,
        dp_rank=rank,
        dp_size=dp,
        seed=seed,
        shuffle=shuffle,
        num_steps=steps if steps is not None else n // g,
        consumed_samples=consumed,
        lengths=lengths,
    )


def test_dp_shards_are_disjoint_and_cover_the_epoch_but_the_remainder():
    ranks = [list(sampler(rank=r)) for r in range(2)]
    seen = [i for batches in ranks for batch in batches for i in batch]
    assert len(seen) == len(set(seen)) == 16  # 22 samples, 2 steps of 8; 6 left out
    assert set(seen) <= set(range(22))
    assert all(len(batch) == 2 for batches in ranks for batch in batches)
    assert sampler().num_dropped_per_epoch == 6


def test_each_step_consumes_one_global_batch_split_across_ranks():
    s0, s1 = sampler(rank=0), sampler(rank=1)
    assert s0.micro_batches_per_step == 2 and len(s0) == 4
    step = [i for b in list(s0)[:2] + list(s1)[:2] for i in b]
    assert sorted(step) == sorted(s0.epoch_order(0)[:8].tolist())


@pytest.mark.parametrize("grouped", [False, True])
def test_micro_batches_do_not_depend_on_the_data_parallel_size(grouped):
    lengths = [(7 * i) % 11 for i in range(22)] if grouped else None
    one = list(sampler(dp=1, lengths=lengths))
    two = [list(sampler(rank=r, dp=2, lengths=lengths)) for r in range(2)]
    for step in range(2):  # micro-batch m of a step goes to rank m % 2
        step_one = one[4 * step : 4 * step + 4]
        assert step_one[0::2] == two[0][2 * step : 2 * step + 2]
        assert step_one[1::2] == two[1][2 * step : 2 * step + 2]
    steps, left_out = sampler(dp=1, lengths=lengths).epoch_micro_batches(0)
    assert steps == one and len(left_out) == 3  # the reference pass replays these


def test_length_grouping_puts_similar_lengths_in_a_micro_batch_within_each_global_batch():
    lengths = [(7 * i) % 11 for i in range(22)]
    plain, grouped = list(sampler(dp=1)), list(sampler(dp=1, lengths=lengths))
    for step in range(2):  # the same samples per optimizer step, regrouped
        assert sorted(sum(plain[4 * step : 4 * step + 4], [])) == sorted(
            sum(grouped[4 * step : 4 * step + 4], [])
        )
        flat = [lengths[i] for mb in grouped[4 * step : 4 * step + 4] for i in mb]
        assert flat == sorted(flat, reverse=True)
    full = list(sampler(rank=1, steps=7, lengths=lengths))
    assert list(sampler(rank=1, steps=7, consumed=24, lengths=lengths)) == full[6:]


def test_resuming_from_consumed_samples_yields_exactly_the_remaining_micro_batches():
    full = list(sampler(rank=1, steps=7))  # crosses epoch boundaries (2 steps per epoch)
    for done in range(8):
        resumed = list(sampler(rank=1, steps=7, consumed=8 * done))
        assert resumed == full[2 * done :]
        assert len(sampler(rank=1, steps=7, consumed=8 * done)) == len(resumed)


def test_every_epoch_is_reshuffled_with_the_seed():
    s = sampler()
    assert s.epoch_order(0).tolist() != s.epoch_order(1).tolist()
    assert s.epoch_order(1).tolist() == sampler().epoch_order(1).tolist()
    assert s.epoch_order(1).tolist() != sampler(seed=4).epoch_order(1).tolist()
    assert sampler(shuffle=False).epoch_order(5).tolist() == list(range(22))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"consumed": 12}, "not a whole number of global batches"),
        ({"n": 7}, "7 samples do not fill one global batch"),
        ({"g": 6, "k": 2, "dp": 2}, "must be a multiple of train.micro_batch_size"),
        ({"rank": 2}, "dp_rank 2 is outside 0..1"),
    ],
)
def test_inconsistent_sampling_settings_are_refused(kwargs, message):
    with pytest.raises(DataError, match=message):
        sampler(**kwargs)
