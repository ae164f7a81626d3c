"""scir_loss equals an independent, straightforward float64 implementation of SCIR_SPEC §1–§4.

The reference below works in probability space, exactly as the spec's equations read; it is
only trusted where probabilities are far from 0 and 1, so the inputs stay moderate here (the
saturated regime is covered by tests/losses/test_scir_loss.py).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from megatron_scir.losses import LossOptions, scir_loss

BETA = 0.1


def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * torch.log(a / b) + (1 - a) * torch.log((1 - a) / (1 - b))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -p * torch.log(p) - (1 - p) * torch.log(1 - p)


def _teacher_detached(p_judge, p_implicit, consistency_grad):
    if consistency_grad == "judge_teacher":
        return p_judge.detach(), p_implicit
    if consistency_grad == "implicit_teacher":
        return p_judge, p_implicit.detach()
    if consistency_grad == "confident_teacher":
        judge_teaches = (p_judge - 0.5).abs() >= (p_implicit - 0.5).abs()
        return (
            torch.where(judge_teaches, p_judge.detach(), p_judge),
            torch.where(judge_teaches, p_implicit, p_implicit.detach()),
        )
    return p_judge, p_implicit


def reference_scir(
    inputs,
    *,
    divergence,
    position_debias,
    consistency_grad,
    pref_loss,
    pref_normalization,
    margin=0.0,
    tie_eps=1e-4,
    consistency_weight=1.0,
    confidence_weight=0.1,
):
    p1, p2, r1, r2, j12, j21 = inputs
    delta = BETA * ((p1 - r1) - (p2 - r2))
    p_implicit = torch.sigmoid(delta)
    if position_debias == "mean_prob":
        p_judge = 0.5 * (torch.sigmoid(j12) + torch.sigmoid(-j21))
    elif position_debias == "mean_logit":
        p_judge = torch.sigmoid(0.5 * (j12 - j21))
    else:
        p_judge = torch.sigmoid(j12)

    g, i = _teacher_detached(p_judge, p_implicit, consistency_grad)
    if divergence == "sym_kl":
        d = 0.5 * (_kl(g, i) + _kl(i, g))
    elif divergence == "js":
        m = 0.5 * (g + i)
        d = 0.5 * (_kl(g, m) + _kl(i, m))
    else:
        d = (g - i) ** 2
    cons = d.mean()
    conf = (_entropy(p_judge) + _entropy(p_implicit)).mean()

    with torch.no_grad():
        ci, cg = p_implicit - 0.5, p_judge - 0.5
        threshold = max(margin, tie_eps)
        consistent = (ci * cg > 0) & (ci.abs() > threshold) & (cg.abs() > threshold)
        sign = torch.sign(ci)
    u = sign * delta
    per_pair = -F.logsigmoid(u) if pref_loss == "dpo" else (u / BETA - 1 / (2 * BETA)) ** 2
    total = (per_pair * consistent).sum()
    if pref_normalization == "pairs":
        pref = total / len(p1)
    else:
        pref = total / max(int(consistent.sum()), 1)
    return pref + consistency_weight * cons + confidence_weight * conf


def _inputs(seed: int, n: int = 12) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    policy = -40 + 5 * torch.randn(2, n, generator=g, dtype=torch.float64)
    ref = policy + 15 * torch.randn(2, n, generator=g, dtype=torch.float64)
    judge = 2 * torch.randn(2, n, generator=g, dtype=torch.float64)
    return [policy[0], policy[1], ref[0], ref[1], judge[0], judge[1]]


def _well_separated(inputs, position_debias) -> bool:
    """No pair within 1e-3 of a selection boundary (float32 vs float64 can't flip it)."""
    with torch.no_grad():
        p1, p2, r1, r2, j12, j21 = inputs
        ci = torch.sigmoid(BETA * ((p1 - r1) - (p2 - r2))) - 0.5
        if position_debias == "mean_prob":
            cg = 0.5 * (torch.sigmoid(j12) + torch.sigmoid(-j21)) - 0.5
        elif position_debias == "mean_logit":
            cg = torch.sigmoid(0.5 * (j12 - j21)) - 0.5
        else:
            cg = torch.sigmoid(j12) - 0.5
    return bool(
        (ci.abs() > 1e-3).all()
        and (cg.abs() > 1e-3).all()
        and ((ci.abs() - cg.abs()).abs() > 1e-3).all()
    )


COMBINATIONS = list(
    itertools.product(
        ("sym_kl", "js", "mse"),
        ("mean_prob", "mean_logit", "none"),
        ("both", "confident_teacher", "judge_teacher", "implicit_teacher"),
        ("dpo", "ipo"),
        ("pairs", "selected"),
    )
)


@pytest.mark.parametrize(
    "divergence,position_debias,consistency_grad,pref_loss,pref_normalization", COMBINATIONS
)
def test_scir_loss_and_gradients_equal_the_spec_written_out_in_float64(
    divergence, position_debias, consistency_grad, pref_loss, pref_normalization
):
    options = dict(
        divergence=divergence,
        position_debias=position_debias,
        consistency_grad=consistency_grad,
        pref_loss=pref_loss,
        pref_normalization=pref_normalization,
    )
    inputs = next(
        inputs for inputs in map(_inputs, range(100)) if _well_separated(inputs, position_debias)
    )
    if position_debias == "none":
        inputs[5] = inputs[5] * 0  # unused: one judge view

    ref_inputs = [x.clone().requires_grad_(True) for x in inputs]
    expected = reference_scir(ref_inputs, **options)
    expected_grads = torch.autograd.grad(expected, ref_inputs, allow_unused=True)

    ours_inputs = [x.float().requires_grad_(True) for x in inputs]
    judge_21 = None if position_debias == "none" else ours_inputs[5]
    loss, metrics = scir_loss(*ours_inputs[:5], judge_21, options=LossOptions(beta=BETA, **options))
    grads = torch.autograd.grad(loss, ours_inputs, allow_unused=True)

    consistent = metrics["scir/consistency_rate"]
    assert 0 < consistent[0] < consistent[1], "the inputs must mix consistent and other pairs"
    if consistency_grad == "confident_teacher":
        teacher = metrics["scir/judge_teacher_rate"]
        assert 0 < teacher[0] < teacher[1], "each side must teach on some pairs"
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    for index, (ours, theirs) in enumerate(zip(grads, expected_grads, strict=True)):
        if theirs is None or (position_debias == "none" and index == 5):
            assert ours is None or torch.all(ours == 0)
            continue
        torch.testing.assert_close(
            ours.double(), theirs, rtol=1e-4, atol=1e-6, msg=f"input {index}"
        )
