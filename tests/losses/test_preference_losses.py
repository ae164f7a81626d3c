"""DPO, IPO and the labelled (dpo / srlm) modes on hand-computed pairs."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_scir.losses import dpo_loss, ipo_loss, labelled_pair_loss, srlm_labels
from megatron_scir.parallel.reductions import reduce_metrics


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_dpo_loss_is_minus_log_sigmoid_of_the_reward_margin():
    # margin = 0.1·((−10 + 12) − (−15 + 14)) = 0.3
    loss, metrics = dpo_loss(_t(-10.0), _t(-15.0), _t(-12.0), _t(-14.0), beta=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.3)), rel=1e-6)
    reduced = reduce_metrics([metrics])
    assert reduced["reward/margin"] == pytest.approx(0.3, rel=1e-5)
    assert reduced["reward/accuracy"] == 1.0


def test_ipo_loss_is_the_squared_distance_of_the_log_ratio_gap_to_one_over_two_beta():
    loss, _ = ipo_loss(_t(-10.0), _t(-15.0), _t(-12.0), _t(-14.0), beta=0.1)
    assert loss.item() == pytest.approx((3.0 - 5.0) ** 2, rel=1e-6)


def test_dpo_loss_keeps_a_gradient_at_a_margin_of_minus_60():
    chosen = torch.tensor([-600.0], requires_grad=True)
    loss, _ = dpo_loss(chosen, _t(0.0), _t(0.0), _t(0.0), beta=0.1)
    (grad,) = torch.autograd.grad(loss, chosen)
    assert torch.isfinite(loss) and grad.item() == pytest.approx(-0.1, rel=1e-6)


def test_labelled_pairs_orient_by_label_and_unknown_labels_only_count_in_the_denominator():
    policy_1, policy_2 = _t(-10.0, -10.0, -10.0), _t(-15.0, -15.0, -15.0)
    ref = _t(-12.0, -12.0, -12.0)
    # Δ = 0.1·((−10 + 12) − (−15 + 12)) = 0.5 for every pair.
    labels = _t(1.0, 0.0, -1.0)
    loss, metrics = labelled_pair_loss(policy_1, policy_2, ref, ref, labels, beta=0.1)
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.5))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    reduced = reduce_metrics([metrics])
    assert reduced["data/labelled_rate"] == pytest.approx(2 / 3)
    assert reduced["reward/accuracy"] == 0.5
    assert reduced["reward/margin"] == pytest.approx(0.0, abs=1e-6)
    selected, _ = labelled_pair_loss(
        policy_1, policy_2, ref, ref, labels, beta=0.1, pref_normalization="selected"
    )
    assert selected.item() == pytest.approx(expected * 3 / 2, rel=1e-6)


def test_labelled_sft_term_uses_the_labelled_chosen_response():
    loss, metrics = labelled_pair_loss(
        _t(-10.0),
        _t(-30.0),
        _t(-10.0),
        _t(-30.0),
        _t(0.0),
        response_lengths=(_t(5.0), _t(10.0)),
        sft_weight=2.0,
    )
    reduced = reduce_metrics([metrics])
    assert reduced["loss/sft"] == pytest.approx(3.0)  # y2: 30 nats over 10 tokens
    assert loss.item() == pytest.approx(math.log(2.0) + 2.0 * 3.0, rel=1e-6)


def test_srlm_labels_follow_the_debiased_judge_and_drop_unsure_pairs():
    # P_G = ½(σ(ℓ12) + σ(−ℓ21)): pair 0 is 0.75 (y1), pair 1 0.25 (y2), pair 2 exactly ½,
    # pair 3 prefers y1 by less than the drop margin.
    judge_12 = _t(math.log(3.0), -math.log(3.0), 0.0, 0.1)
    judge_21 = _t(-math.log(3.0), math.log(3.0), 0.0, -0.1)
    labels = srlm_labels(judge_12, judge_21, drop_margin=0.05)
    assert labels.tolist() == [1.0, 0.0, -1.0, -1.0]
    assert srlm_labels(judge_12, judge_21).tolist() == [1.0, 0.0, -1.0, 1.0]
