"""The labelled DPO/IPO loss (the dpo / srlm modes) on hand-computed pairs."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_scir.losses import LossOptions, labelled_pair_loss
from megatron_scir.parallel.reductions import reduce_metrics

Y1_CHOSEN = torch.tensor([1.0])


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_dpo_is_minus_log_sigmoid_of_the_reward_margin_of_the_chosen_response():
    # margin = 0.1·((−10 + 12) − (−15 + 14)) = 0.3
    loss, metrics = labelled_pair_loss(
        _t(-10.0), _t(-15.0), _t(-12.0), _t(-14.0), Y1_CHOSEN, options=LossOptions(beta=0.1)
    )
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.3)), rel=1e-6)
    reduced = reduce_metrics([metrics])
    assert reduced["reward/margin"] == pytest.approx(0.3, rel=1e-5)
    assert reduced["reward/accuracy"] == 1.0


def test_ipo_is_the_squared_distance_of_the_log_ratio_gap_to_one_over_two_beta():
    options = LossOptions(beta=0.1, pref_loss="ipo")
    loss, _ = labelled_pair_loss(
        _t(-10.0), _t(-15.0), _t(-12.0), _t(-14.0), Y1_CHOSEN, options=options
    )
    assert loss.item() == pytest.approx((3.0 - 5.0) ** 2, rel=1e-6)


def test_dpo_keeps_a_gradient_at_a_margin_of_minus_60():
    chosen = torch.tensor([-600.0], requires_grad=True)
    loss, _ = labelled_pair_loss(
        chosen, _t(0.0), _t(0.0), _t(0.0), Y1_CHOSEN, options=LossOptions(beta=0.1)
    )
    (grad,) = torch.autograd.grad(loss, chosen)
    assert torch.isfinite(loss) and grad.item() == pytest.approx(-0.1, rel=1e-6)


def test_labelled_pairs_orient_by_label_and_unknown_labels_only_count_in_the_denominator():
    policy_1, policy_2 = _t(-10.0, -10.0, -10.0), _t(-15.0, -15.0, -15.0)
    ref = _t(-12.0, -12.0, -12.0)
    # Δ = 0.1·((−10 + 12) − (−15 + 12)) = 0.5 for every pair.
    labels = _t(1.0, 0.0, -1.0)
    loss, metrics = labelled_pair_loss(policy_1, policy_2, ref, ref, labels, options=LossOptions())
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.5))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    reduced = reduce_metrics([metrics])
    assert reduced["data/labelled_rate"] == pytest.approx(2 / 3)
    assert reduced["reward/accuracy"] == 0.5
    assert reduced["reward/margin"] == pytest.approx(0.0, abs=1e-6)
    selected, _ = labelled_pair_loss(
        policy_1, policy_2, ref, ref, labels, options=LossOptions(pref_normalization="selected")
    )
    assert selected.item() == pytest.approx(expected * 3 / 2, rel=1e-6)


def test_labelled_sft_term_uses_the_labelled_chosen_response():
    loss, metrics = labelled_pair_loss(
        _t(-10.0),
        _t(-30.0),
        _t(-10.0),
        _t(-30.0),
        _t(0.0),
        options=LossOptions(sft_weight=2.0),
        response_lengths=(_t(5.0), _t(10.0)),
    )
    reduced = reduce_metrics([metrics])
    assert reduced["loss/sft"] == pytest.approx(3.0)  # y2: 30 nats over 10 tokens
    assert loss.item() == pytest.approx(math.log(2.0) + 2.0 * 3.0, rel=1e-6)


def test_filler_pairs_are_left_out_of_loss_and_metrics_but_keep_the_denominator():
    labels, mask = _t(1.0, 1.0), torch.tensor([True, False])
    loss, metrics = labelled_pair_loss(
        _t(-10.0, -10.0),
        _t(-15.0, -15.0),
        _t(-12.0, -12.0),
        _t(-14.0, -14.0),
        labels,
        options=LossOptions(),
        pair_mask=mask,
    )
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.3)) / 2, rel=1e-6)
    reduced = reduce_metrics([metrics])
    assert reduced["data/labelled_rate"] == 1.0 and metrics["reward/accuracy"][1] == 1
