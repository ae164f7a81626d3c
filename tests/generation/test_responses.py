"""Completions become response texts: cut at stop strings, flagged when the budget cut them."""

from __future__ import annotations

from megatron_scir.generation import Completion, finish_response


def _decode(ids):
    return "".join(chr(ord("a") + i) for i in ids)


def test_response_is_cut_before_the_earliest_stop_string():
    done = finish_response(
        Completion((0, 1, 2, 3, 4), hit_eos=False), decode=_decode, stop_strings=("de", "cd")
    )
    assert done.text == "ab" and not done.truncated and done.num_tokens == 5


def test_response_ended_by_eos_is_complete_and_one_cut_by_the_budget_is_truncated():
    eos = finish_response(Completion((0, 1), hit_eos=True), decode=_decode, stop_strings=())
    cut = finish_response(Completion((0, 1), hit_eos=False), decode=_decode, stop_strings=("z",))
    assert (eos.text, eos.truncated) == ("ab", False)
    assert (cut.text, cut.truncated) == ("ab", True)
