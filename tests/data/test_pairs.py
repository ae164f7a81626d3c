"""Pair building from N responses per prompt (SCIR_SPEC §7 step 2)."""

from __future__ import annotations

import itertools

import pytest

from megatron_scir.data import DataError, GenerationRecord, build_pairs


def gen(prompt_id: str, responses: list[str], truncated: list[bool] | None = None):
    return GenerationRecord(
        prompt_id=prompt_id,
        prompt=f"prompt {prompt_id}",
        responses=tuple(responses),
        truncated=tuple(truncated or [False] * len(responses)),
    )


FOUR = ["r0", "r1", "r2", "r3"]


def unordered(pair) -> frozenset:
    return frozenset((pair.response_1, pair.response_2))


def test_two_pairs_from_four_responses_use_all_four_responses():
    pairs, report = build_pairs([gen(str(i), FOUR) for i in range(50)])
    assert report.num_pairs == len(pairs) == 100
    for prompt_pairs in itertools.batched(pairs, 2):
        used = [r for p in prompt_pairs for r in (p.response_1, p.response_2)]
        assert sorted(used) == FOUR  # disjoint: distinct responses, no pair twice


def test_more_pairs_than_disjoint_ones_never_repeat_a_pair():
    pairs, _ = build_pairs([gen("p", FOUR)], pairs_per_prompt=6)
    assert len({unordered(p) for p in pairs}) == 6  # every unordered pair exactly once
    pairs, _ = build_pairs([gen("p", FOUR)], pairs_per_prompt=10)
    assert len(pairs) == 6  # capped at m(m-1)/2


def test_order_inside_a_pair_is_randomised_and_fixed_by_the_seed():
    gens = [gen(str(i), FOUR) for i in range(200)]
    pairs, _ = build_pairs(gens, seed=1)
    first_is_lower = sum(p.response_1 < p.response_2 for p in pairs)
    assert 150 < first_is_lower < 250  # about half of 400
    assert build_pairs(gens, seed=1)[0] == pairs
    assert build_pairs(gens, seed=2)[0] != pairs


def test_a_prompts_pairs_do_not_depend_on_the_other_prompts():
    alone, _ = build_pairs([gen("x", FOUR)], seed=7)
    among, _ = build_pairs([gen("a", FOUR), gen("x", FOUR), gen("b", FOUR)], seed=7)
    assert among[2:4] == alone


def test_pair_ids_name_the_prompt_and_the_response_indices_in_pair_order():
    pairs, _ = build_pairs([gen("p7", FOUR)])
    for pair in pairs:
        prompt_id, i, j = pair.pair_id.split(":")
        assert prompt_id == pair.prompt_id == "p7"
        assert (FOUR[int(i)], FOUR[int(j)]) == (pair.response_1, pair.response_2)
        assert pair.label is None and pair.ref_logps_1 is None


def test_identical_and_empty_responses_are_dropped_and_counted():
    pairs, report = build_pairs(
        [gen("p", ["same", " same\n", "", "   ", "other"])], pairs_per_prompt=3
    )
    assert [unordered(p) for p in pairs] == [frozenset({"same", "other"})]
    assert (report.num_empty, report.num_duplicate, report.num_pairs) == (2, 1, 1)


def test_prompts_with_fewer_than_two_usable_responses_give_no_pair_and_are_counted():
    pairs, report = build_pairs([gen("a", ["only", ""]), gen("b", ["x", "x"]), gen("c", FOUR)])
    assert {p.prompt_id for p in pairs} == {"c"}
    assert report.num_prompts_without_pairs == 2
    assert "2 prompts had fewer than 2 usable responses" in report.summary()


@pytest.mark.parametrize(
    ("policy", "num_pairs", "flagged"), [("keep", 2, 0), ("flag", 2, 1), ("drop", 2, 0)]
)
def test_truncated_responses_are_kept_flagged_or_dropped(policy, num_pairs, flagged):
    record = gen("p", FOUR, truncated=[False, False, True, False])
    pairs, report = build_pairs([record], truncated_responses=policy)
    assert len(pairs) == num_pairs
    flags = [(p.response_1, p.truncated_1) for p in pairs] + [
        (p.response_2, p.truncated_2) for p in pairs
    ]
    assert sum(flag for _, flag in flags) == flagged
    assert all(text == "r2" for text, flag in flags if flag)
    assert report.num_truncated == 1
    assert report.num_truncated_dropped == (policy == "drop")
    assert report.num_pairs_with_truncated == flagged
    if policy == "drop":
        assert all("r2" not in unordered(p) for p in pairs)


def test_bad_pair_settings_are_refused():
    with pytest.raises(DataError, match="keep|flag|drop"):
        build_pairs([gen("p", FOUR)], truncated_responses="cut")
    with pytest.raises(DataError, match="pairs_per_prompt must be >= 1"):
        build_pairs([gen("p", FOUR)], pairs_per_prompt=0)
