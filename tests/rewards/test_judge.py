"""The judge read from verdict-token log-probs: log-odds, debiasing, verdict mass, scores."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_scir.rewards import (
    expected_scores,
    judge_preference,
    pairwise_log_odds,
    pointwise_log_odds,
    verdict_mass,
)


def test_pairwise_log_odds_equal_the_difference_of_the_raw_verdict_logits():
    logits = torch.randn(3, 20, dtype=torch.float64)
    verdict_logps = torch.log_softmax(logits, dim=-1)[:, [4, 11]]
    expected = logits[:, 4] - logits[:, 11]
    torch.testing.assert_close(
        pairwise_log_odds(verdict_logps).double(), expected, atol=1e-6, rtol=0
    )


def test_verdict_mass_is_the_probability_on_the_verdict_tokens():
    logps = torch.log(torch.tensor([[0.2, 0.1], [0.45, 0.45]]))
    torch.testing.assert_close(verdict_mass(logps), torch.tensor([0.3, 0.9]))


@pytest.mark.parametrize(
    "position_debias,expected",
    [
        # ℓ12 = ln 3: σ(ℓ12) = 0.75; ℓ21 = −ln 4: σ(−ℓ21) = 0.8.
        ("mean_prob", 0.5 * (0.75 + 0.8)),
        ("mean_logit", 1 / (1 + math.exp(-0.5 * (math.log(3) + math.log(4))))),
    ],
)
def test_position_debias_combines_both_orders(position_debias, expected):
    log_p, log_q = judge_preference(
        torch.tensor([math.log(3.0)]),
        torch.tensor([-math.log(4.0)]),
        position_debias=position_debias,
    )
    assert log_p.exp().item() == pytest.approx(expected, abs=1e-7)
    assert log_q.exp().item() == pytest.approx(1 - expected, abs=1e-7)


def test_one_judge_view_gives_sigmoid_of_its_log_odds_and_none_refuses_a_second_view():
    log_p, _ = judge_preference(torch.tensor([0.0, 2.0]), position_debias="mean_prob")
    torch.testing.assert_close(log_p.exp(), torch.sigmoid(torch.tensor([0.0, 2.0])))
    with pytest.raises(ValueError, match="one judge order"):
        judge_preference(torch.zeros(1), torch.zeros(1), position_debias="none")


def test_saturated_judge_log_odds_stay_finite_in_log_space():
    log_p, log_q = judge_preference(torch.tensor([200.0]), torch.tensor([-200.0]))
    assert log_p.item() == pytest.approx(0.0, abs=1e-6)
    assert log_q.item() == pytest.approx(-200.0, rel=1e-5)  # log σ(−200), not −inf


def test_expected_score_renormalises_over_the_score_tokens_only():
    # p restricted to scores 0..2 = (0.25, 0.25, 0.5) whatever mass the rest of the vocabulary has.
    logps = torch.log(torch.tensor([[0.05, 0.05, 0.1]]))
    assert expected_scores(logps).item() == pytest.approx(0.25 * 1 + 0.5 * 2)


def test_pointwise_log_odds_are_the_score_difference_over_the_temperature():
    out = pointwise_log_odds(torch.tensor([4.0]), torch.tensor([2.5]), temperature=0.5)
    assert out.item() == pytest.approx(3.0)
