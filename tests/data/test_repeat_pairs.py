"""``repeat_pairs`` (``iteration.too_few_pairs=repeat``): every pair once, then seeded rounds of
copies up to one global batch, balanced, unique ids, the same for the same seed."""

from __future__ import annotations

from collections import Counter

import pytest

from megatron_scir.data import PairRecord, read_records, write_records
from megatron_scir.data.errors import DataError
from megatron_scir.data.pairs import repeat_pairs


def _pairs(n: int) -> list[PairRecord]:
    return [
        PairRecord(pair_id=f"p{i}:0:1", prompt_id=f"p{i}", prompt="q", response_1="a",
                   response_2=f"b{i}")
        for i in range(n)
    ]


@pytest.mark.parametrize(("n", "target"), [(3, 8), (5, 8), (1, 4), (7, 64), (8, 8), (9, 8)])
def test_every_pair_once_then_balanced_copies_up_to_the_target(n, target):
    pairs = _pairs(n)
    filled = repeat_pairs(pairs, target, seed="1234:2")
    assert len(filled) == max(n, target) and filled[:n] == pairs
    assert len({p.pair_id for p in filled}) == len(filled)
    copies = Counter(p.pair_id.split("#")[0] for p in filled)
    assert set(copies) == {p.pair_id for p in pairs}
    assert max(copies.values()) - min(copies.values()) <= 1
    for copy in filled[n:]:
        original = pairs[int(copy.prompt_id[1:])]
        assert copy.pair_id.startswith(original.pair_id + "#")
        assert (copy.response_1, copy.response_2) == (original.response_1, original.response_2)


def test_the_same_seed_gives_the_same_copies_and_another_seed_others(tmp_path):
    pairs = _pairs(5)
    a, b = repeat_pairs(pairs, 16, seed="1:1"), repeat_pairs(pairs, 16, seed="1:1")
    assert a == b and [p.pair_id for p in a] == [p.pair_id for p in b]
    assert [p.pair_id for p in repeat_pairs(pairs, 16, seed="1:2")] != [p.pair_id for p in a]
    write_records(tmp_path / "pairs.jsonl", a)  # a valid pairs file: unique ids
    assert len(read_records(tmp_path / "pairs.jsonl", "pairs")[0]) == 16


def test_nothing_to_repeat_is_an_error():
    with pytest.raises(DataError, match="no pairs to repeat"):
        repeat_pairs([], 8, seed="0:1")
