"""The implicit reward model: sequence log-probs, r(y), Δ_I and P_I (SCIR_SPEC §1)."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_scir.rewards import (
    implicit_log_odds,
    implicit_preference,
    implicit_rewards,
    sequence_logps,
)


def test_sequence_log_probs_sum_response_tokens_only_even_next_to_minus_inf():
    token_logps = torch.tensor([[-1.0, -2.0, -3.0, -torch.inf], [-0.5, -0.25, -8.0, -9.0]])
    loss_mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(sequence_logps(token_logps, loss_mask), torch.tensor([-5.0, -0.75]))


def test_masked_positions_receive_no_gradient():
    token_logps = torch.randn(2, 5, requires_grad=True)
    loss_mask = torch.tensor([[0.0, 1, 1, 0, 0], [1, 0, 0, 0, 1]])
    sequence_logps(token_logps, loss_mask).sum().backward()
    assert torch.equal(token_logps.grad, loss_mask)


def test_implicit_reward_is_beta_times_the_log_ratio_optionally_per_token():
    policy, ref = torch.tensor([-10.0, -30.0]), torch.tensor([-14.0, -20.0])
    torch.testing.assert_close(implicit_rewards(policy, ref, beta=0.5), torch.tensor([2.0, -5.0]))
    normalised = implicit_rewards(policy, ref, beta=0.5, response_lengths=torch.tensor([4, 10]))
    torch.testing.assert_close(normalised, torch.tensor([0.5, -0.5]))


def test_delta_is_the_reward_difference_and_p_implicit_its_sigmoid():
    delta = implicit_log_odds(
        torch.tensor([-10.0]),
        torch.tensor([-12.0]),
        torch.tensor([-11.0]),
        torch.tensor([-11.0]),
        beta=0.1,
    )
    assert delta.item() == pytest.approx(0.1 * (1.0 + 1.0))
    log_p, log_q = implicit_preference(delta)
    assert log_p.exp().item() == pytest.approx(1 / (1 + math.exp(-0.2)), rel=1e-6)
    assert (log_p.exp() + log_q.exp()).item() == pytest.approx(1.0, abs=1e-7)


def test_policy_equal_to_reference_gives_p_implicit_one_half():
    logps = torch.tensor([-7.0, -3.0])
    delta = implicit_log_odds(logps, logps.flip(0), logps, logps.flip(0), beta=0.1)
    log_p, _ = implicit_preference(delta)
    assert torch.equal(delta, torch.zeros(2)) and torch.all(log_p.exp() == 0.5)
