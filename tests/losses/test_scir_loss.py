"""scir_loss: closed-form values worked out by hand, edge cases, and the metrics it reports."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_scir.losses import LossOptions, scir_loss
from megatron_scir.parallel.reductions import reduce_metrics

LN3 = math.log(3.0)
H_075 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # entropy of Bernoulli(0.75)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


ONE_ORDER = LossOptions(position_debias="none")


def _pairs(delta, judge_12, judge_21=None, *, beta=0.1, gold_labels=None, **options):
    """Pairs with Δ_I = delta exactly: policy y1 log-prob moved by delta/β, the rest equal."""
    delta = torch.as_tensor(delta, dtype=torch.float32)
    zeros = torch.zeros_like(delta)
    policy_1 = (-20.0 + delta / beta).requires_grad_(True)
    policy_2 = (zeros - 20.0).requires_grad_(True)
    judge_12 = torch.as_tensor(judge_12, dtype=torch.float32).requires_grad_(True)
    if judge_21 is not None:
        judge_21 = torch.as_tensor(judge_21, dtype=torch.float32).requires_grad_(True)
    loss, metrics = scir_loss(
        policy_1,
        policy_2,
        zeros - 20.0,
        zeros - 20.0,
        judge_12,
        judge_21,
        options=LossOptions(beta=beta, **options),
        gold_labels=gold_labels,
    )
    return loss, reduce_metrics([metrics]), (policy_1, policy_2, judge_12, judge_21)


def test_policy_equal_to_reference_gives_no_consistent_pair_and_the_hand_computed_loss():
    # Δ_I = 0 → P_I = ½ (a tie, no label); judge P_G = σ(ln 3) = 0.75.
    loss, metrics, _ = _pairs([0.0], [LN3], position_debias="none")
    sym_kl = 0.5 * (0.75 - 0.5) * (LN3 - 0.0)  # ½(P_G − P_I)(logit P_G − logit P_I)
    expected = 0.0 + 1.0 * sym_kl + 0.1 * (H_075 + math.log(2.0))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["loss/pref"] == 0.0
    assert metrics["scir/consistency_rate"] == 0.0
    assert metrics["scir/ties"] == 1.0
    assert math.isnan(metrics["reward/margin"])  # undefined without consistent pairs


@pytest.mark.parametrize("divergence", ["sym_kl", "js", "mse"])
def test_equal_judge_and_implicit_probabilities_give_zero_consistency_loss(divergence):
    # mean_logit with ℓ21 = −ℓ12 makes P_G = σ(ℓ12) = σ(Δ_I) = P_I.
    delta = _t(-2.0, 0.3, 1.7)
    _, metrics, _ = _pairs(
        delta, delta, -delta, position_debias="mean_logit", divergence=divergence
    )
    assert metrics["loss/cons"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["scir/consistency_rate"] == 1.0


@pytest.mark.parametrize(
    "divergence,expected",
    [
        ("sym_kl", 0.5 * 0.5 * (LN3 + LN3)),  # P_G = 0.75, P_I = 0.25
        ("js", math.log(2.0) - H_075),  # M = ½: both KLs are ln 2 − H(0.75)
        ("mse", 0.25),
    ],
)
def test_known_divergence_values_between_three_quarters_and_one_quarter(divergence, expected):
    _, metrics, _ = _pairs([-LN3], [LN3], position_debias="none", divergence=divergence)
    assert metrics["loss/cons"] == pytest.approx(expected, abs=1e-6)
    assert metrics["scir/consistency_rate"] == 0.0  # they disagree


@pytest.mark.parametrize(
    "pref_loss,expected_pref",
    [("dpo", -math.log(0.75)), ("ipo", (LN3 / 0.1 - 1 / 0.2) ** 2)],
)
def test_a_consistent_pair_pays_the_preference_loss_of_its_agreed_label(pref_loss, expected_pref):
    # Both models say y2 ≻ y1 with probability 0.75: the agreed label is y2, s·Δ_I = ln 3.
    loss, metrics, _ = _pairs([-LN3], [-LN3], position_debias="none", pref_loss=pref_loss)
    assert metrics["loss/pref"] == pytest.approx(expected_pref, rel=1e-6)
    assert metrics["loss/cons"] == pytest.approx(0.0, abs=1e-7)
    assert loss.item() == pytest.approx(expected_pref + 0.1 * 2 * H_075, rel=1e-6)
    assert metrics["reward/margin"] == pytest.approx(LN3, rel=1e-6)


def test_mean_prob_averages_the_two_orders_in_probability_space():
    # σ(ln 3) = 0.75 shown first, and the swapped view says y2 wins with σ(0) = ½:
    # P_G = ½(0.75 + 0.5) = 0.625.
    _, metrics, _ = _pairs([0.0], [LN3], [0.0])
    assert metrics["scir/p_judge_mean"] == pytest.approx(0.625, abs=1e-7)


def test_all_pairs_consistent_averages_dpo_over_every_pair():
    delta = _t(1.0, -2.0, 0.5, -0.25)
    _, metrics, _ = _pairs(delta, delta * 3, position_debias="none")
    assert metrics["scir/consistency_rate"] == 1.0
    expected = torch.nn.functional.softplus(-delta.abs()).mean().item()
    assert metrics["loss/pref"] == pytest.approx(expected, rel=1e-6)


def test_no_consistent_pair_gives_a_finite_loss_and_zero_preference_loss():
    # Disagreeing pairs and a tie: nothing is selected, under both normalisations.
    for normalization in ("pairs", "selected"):
        loss, metrics, inputs = _pairs(
            _t(1.0, -1.0, 0.0),
            _t(-2.0, 2.0, 3.0),
            position_debias="none",
            pref_normalization=normalization,
        )
        assert torch.isfinite(loss)
        assert metrics["loss/pref"] == 0.0 and metrics["scir/consistency_rate"] == 0.0
        grads = torch.autograd.grad(loss, inputs[:3])
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("divergence", ["sym_kl", "js", "mse"])
@pytest.mark.parametrize("position_debias", ["mean_prob", "mean_logit"])
def test_saturated_rewards_up_to_50_stay_finite_and_keep_gradients(divergence, position_debias):
    delta = _t(50.0, -50.0, 30.0, -45.0)
    judge_12 = _t(-50.0, -50.0, 40.0, 45.0)
    loss, metrics, inputs = _pairs(
        delta, judge_12, -judge_12, divergence=divergence, position_debias=position_debias
    )
    policy_1, policy_2, judge_12, judge_21 = inputs
    grads = torch.autograd.grad(loss, [policy_1, policy_2, judge_12, judge_21])
    assert torch.isfinite(loss)
    for grad in grads:
        assert torch.isfinite(grad).all()
    # The disagreeing pairs (0, 3) pull both reward models: a clamp would zero these.
    for grad in grads:
        assert (grad[[0, 3]] != 0).all()
    if divergence == "sym_kl" and position_debias == "mean_logit":
        # ½(P_G − P_I)(logit P_G − logit P_I) for P_G ≈ 0, P_I ≈ 1 is ½·(−1)·(−50 − 50) = 50.
        per_pair_0 = 0.5 * -1.0 * (-50.0 - 50.0)
        assert metrics["loss/cons"] > per_pair_0 / 4 - 1e-3


def test_predictions_within_tie_eps_of_one_half_are_not_consistent():
    # Δ_I = 2e-4 → P_I − ½ ≈ 5e-5 < tie_eps = 1e-4, though the judge agrees confidently.
    _, metrics, _ = _pairs(_t(2e-4, 1e-2), _t(3.0, 3.0), position_debias="none")
    assert metrics["scir/consistency_rate"] == 0.5
    assert metrics["scir/ties"] == 0.5


def test_margin_requires_both_models_to_be_confident():
    # P_I − ½ ≈ 0.0125 (Δ_I = 0.05) is above tie_eps but below the margin 0.05.
    _, metrics, _ = _pairs(_t(0.05, 1.0), _t(3.0, 3.0), position_debias="none", margin=0.05)
    assert metrics["scir/consistency_rate"] == 0.5
    assert metrics["scir/ties"] == 0.0


@pytest.mark.parametrize(
    "consistency_grad,judge_trained,implicit_trained",
    [("both", True, True), ("judge_teacher", False, True), ("implicit_teacher", True, False)],
)
def test_consistency_grad_decides_which_side_the_penalty_trains(
    consistency_grad, judge_trained, implicit_trained
):
    # Only L_cons: no confidence term, and disagreeing pairs leave L_pref out.
    loss, _, (policy_1, _, judge_12, _) = _pairs(
        _t(1.0, -0.5),
        _t(-2.0, 1.0),
        position_debias="none",
        confidence_weight=0.0,
        consistency_grad=consistency_grad,
    )
    grad_policy, grad_judge = torch.autograd.grad(loss, [policy_1, judge_12])
    assert bool((grad_judge != 0).all()) is judge_trained
    assert bool((grad_policy != 0).all()) is implicit_trained


def test_confident_teacher_detaches_the_more_confident_side_per_pair():
    # Pair 0: the judge is more confident (teacher) → only the implicit side moves.
    # Pair 1: the implicit model is more confident → only the judge moves.
    loss, metrics, (policy_1, _, judge_12, _) = _pairs(
        _t(0.5, -3.0),
        _t(-3.0, 0.5),
        position_debias="none",
        confidence_weight=0.0,
        consistency_grad="confident_teacher",
    )
    grad_policy, grad_judge = torch.autograd.grad(loss, [policy_1, judge_12])
    assert grad_policy[0] != 0 and grad_judge[0] == 0
    assert grad_policy[1] == 0 and grad_judge[1] != 0
    assert metrics["scir/judge_teacher_rate"] == 0.5


def test_pairs_normalization_divides_by_all_pairs_and_selected_by_the_consistent_ones():
    delta, judge = _t(1.0, 2.0, -1.0, 0.5), _t(1.0, 1.0, 1.0, -1.0)  # pairs 0 and 1 consistent
    per_pair = torch.nn.functional.softplus(-delta[:2]).sum().item()
    _, pairs, _ = _pairs(delta, judge, position_debias="none")
    _, selected, _ = _pairs(delta, judge, position_debias="none", pref_normalization="selected")
    assert pairs["loss/pref"] == pytest.approx(per_pair / 4, rel=1e-6)
    assert selected["loss/pref"] == pytest.approx(per_pair / 2, rel=1e-6)


def test_sft_term_is_the_per_token_nll_of_the_agreed_chosen_response_over_all_pairs():
    policy_1, policy_2 = _t(-30.0, -12.0), _t(-20.0, -40.0)
    ref = _t(-25.0, -25.0)
    lengths = (_t(10, 4), _t(5, 8))
    # Pair 0: Δ_I = 0.1·(−5 − 5) = −1 and the judge agrees → chosen y2, NLL 20/5 = 4 per token.
    # Pair 1: Δ_I = 0.1·(13 + 15) > 0 but the judge disagrees → not selected.
    loss, metrics = scir_loss(
        policy_1,
        policy_2,
        ref,
        ref,
        _t(-2.0, -2.0),
        options=LossOptions(position_debias="none", sft_weight=0.5),
        response_lengths=lengths,
    )
    reduced = reduce_metrics([metrics])
    assert reduced["loss/sft"] == pytest.approx(4.0 / 2, rel=1e-6)
    base = reduced["loss/pref"] + reduced["loss/cons"] + 0.1 * reduced["loss/conf"]
    assert loss.item() == pytest.approx(base + 0.5 * 2.0, rel=1e-6)
    assert reduced["scir/chosen_length"] == 5.0 and reduced["scir/rejected_length"] == 10.0


def test_length_normalisation_divides_each_log_ratio_by_its_response_length():
    lengths = (_t(10.0), _t(4.0))
    _, metrics = scir_loss(
        _t(-10.0),
        _t(-10.0),
        _t(-20.0),
        _t(-14.0),
        _t(3.0),
        options=LossOptions(position_debias="none", length_normalize=True),
        response_lengths=lengths,
    )
    delta = 0.1 * (10.0 / 10 - 4.0 / 4)  # = 0: a tie despite different raw log-ratios
    assert reduce_metrics([metrics])["scir/p_implicit_mean"] == pytest.approx(
        1 / (1 + math.exp(-delta)), abs=1e-7
    )


def test_gold_labels_give_the_accuracy_of_each_label_source():
    # Pair 0: both right. Pair 1: implicit right, judge wrong (inconsistent).
    # Pair 2: both wrong (consistent, agreed label wrong). Pair 3: gold unknown.
    delta, judge = _t(1.0, -1.0, 1.0, 1.0), _t(2.0, 2.0, 2.0, 2.0)
    gold = _t(1.0, 0.0, 0.0, -1.0)
    _, metrics, _ = _pairs(delta, judge, position_debias="none", gold_labels=gold)
    assert metrics["gold/accuracy_implicit"] == pytest.approx(2 / 3)
    assert metrics["gold/accuracy_judge"] == pytest.approx(1 / 3)
    assert metrics["gold/accuracy_agreed"] == pytest.approx(1 / 2)


def test_metrics_use_the_spec_slash_keys():
    _, metrics, _ = _pairs(_t(1.0, -1.0), _t(1.0, 1.0), _t(-1.0, 1.0))
    for key in (
        "loss/total",
        "loss/pref",
        "loss/cons",
        "loss/conf",
        "scir/consistency_rate",
        "scir/ties",
        "scir/p_implicit_mean",
        "scir/p_implicit_std",
        "scir/p_judge_mean",
        "scir/p_judge_std",
        "scir/p_abs_diff",
        "reward/margin",
    ):
        assert key in metrics, key


def test_bfloat16_inputs_are_computed_in_float32():
    inputs = [torch.tensor([v]).bfloat16() for v in (-10.0, -12.0, -11.0, -11.0, 1.0)]
    loss, _ = scir_loss(*inputs, options=ONE_ORDER)
    assert loss.dtype == torch.float32


def test_unknown_options_and_mismatched_shapes_are_refused():
    one, options = _t(0.0), LossOptions()
    with pytest.raises(
        ValueError, match=r"divergence='kl' is not one of \('sym_kl', 'js', 'mse'\)"
    ):
        LossOptions(divergence="kl")
    with pytest.raises(ValueError, match="same shape"):
        scir_loss(one, one, one, one, _t(0.0, 1.0), options=options)
    with pytest.raises(ValueError, match="response_lengths"):
        scir_loss(one, one, one, one, one, options=LossOptions(sft_weight=1.0))
    with pytest.raises(ValueError, match="judge_logits_21=None"):
        scir_loss(one, one, one, one, one, one, options=ONE_ORDER)


@pytest.mark.parametrize("pref_normalization", ["pairs", "selected"])
def test_filler_pairs_add_nothing_but_keep_the_denominator(pref_normalization):
    # The last micro-batches of an epoch are padded to k with repeated (filler) pairs.
    g = torch.Generator().manual_seed(0)
    real = [torch.randn(3, generator=g) * 10 - 30 for _ in range(4)] + [torch.randn(3) * 2]
    filler = [torch.cat([x, x[:1]]) for x in real]  # pair 0 repeated as a filler
    mask = torch.tensor([True, True, True, False])
    options = LossOptions(position_debias="none", pref_normalization=pref_normalization)
    loss_real, metrics_real = scir_loss(*real, options=options)
    loss_filled, metrics_filled = scir_loss(*filler, pair_mask=mask, options=options)
    scale = 3 / 4 if pref_normalization == "pairs" else None
    reduced_real, reduced_filled = reduce_metrics([metrics_real]), reduce_metrics([metrics_filled])
    if scale is not None:
        assert loss_filled.item() == pytest.approx(scale * loss_real.item(), rel=1e-6)
    for key in ("scir/consistency_rate", "scir/p_judge_mean", "scir/p_implicit_std"):
        assert reduced_filled[key] == pytest.approx(reduced_real[key], rel=1e-6), key


def test_selection_all_trains_every_pair_the_judge_labels_with_the_judge_label():
    # Δ_I = 0 (the first step): no consistent pair, but selection off trains on the two pairs the
    # judge labels (the third is a judge tie), each with the judge's side.
    _, metrics, _ = _pairs(_t(0.0, 0.0, 0.0), _t(LN3, -LN3, 0.0), position_debias="none")
    assert metrics["scir/consistency_rate"] == 0.0 and metrics["loss/pref"] == 0.0
    assert metrics["scir/selected_rate"] == 0.0
    _, metrics, _ = _pairs(
        _t(0.0, 0.0, 0.0), _t(LN3, -LN3, 0.0), position_debias="none", selection="all"
    )
    assert metrics["scir/consistency_rate"] == 0.0  # the agreement, whatever is trained on
    assert metrics["scir/selected_rate"] == pytest.approx(2 / 3)
    assert metrics["loss/pref"] == pytest.approx(2 / 3 * math.log(2.0), rel=1e-6)  # ℓ(0) = ln 2
    # where the implicit reward disagrees, the judge's label still wins
    delta = _t(1.0, -1.0)
    _, metrics, _ = _pairs(delta, -3 * delta, position_debias="none", selection="all")
    expected = torch.nn.functional.softplus(delta.abs()).mean().item()  # ℓ(−|Δ|)
    assert metrics["loss/pref"] == pytest.approx(expected, rel=1e-6)


def test_previous_reference_gives_the_implicit_reward_an_opinion_at_the_first_step():
    # πθ = πref = M_t (Δ = 0 for the DPO term); against M_{t-1} y1 gained 10 nats and y2 lost 5:
    # Δ_I = β·15 = 1.5, so P_I = σ(1.5) agrees with a judge that prefers y1.
    policy = (_t(-20.0).requires_grad_(True), _t(-20.0).requires_grad_(True))
    ref = (_t(-20.0), _t(-20.0))
    previous = (_t(-30.0), _t(-15.0))
    options = LossOptions(position_debias="none", implicit_reference="previous")
    loss, metrics = scir_loss(
        *policy, *ref, _t(LN3), None, options=options, implicit_ref_logps=previous
    )
    metrics = reduce_metrics([metrics])
    assert metrics["scir/consistency_rate"] == 1.0
    assert metrics["scir/p_implicit_mean"] == pytest.approx(torch.sigmoid(_t(1.5)).item())
    # the DPO term is ℓ(s·Δ) with Δ against M_t: ln 2 at the first step
    assert metrics["loss/pref"] == pytest.approx(math.log(2.0), rel=1e-6)
    # under `current` the same pair is a tie with no label
    _, current = scir_loss(
        *policy, *ref, _t(LN3), None, options=ONE_ORDER, implicit_ref_logps=previous
    )
    assert reduce_metrics([current])["scir/consistency_rate"] == 0.0
    # the gradient of the DPO term is the one of plain DPO on the agreed label
    grads = torch.autograd.grad(loss, policy)
    assert grads[0].item() < 0 < grads[1].item()  # raise y1, lower y2 (loss decreases)
    with pytest.raises(ValueError, match="implicit_ref_logps"):
        scir_loss(*policy, *ref, _t(LN3), None, options=options)
