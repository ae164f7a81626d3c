"""LossOptions (validated once, from the config) and the loss-mode registry (SCIR_SPEC §6)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_scir.config import load_config
from megatron_scir.config.choices import (
    ConsistencyGrad,
    Divergence,
    LossMode,
    PositionDebias,
    PrefLoss,
    PrefNormalization,
)
from megatron_scir.losses import (
    LOSS_MODES,
    LossOptions,
    PairTensors,
    labelled_pair_loss,
    loss_mode,
    scir_loss,
)


def test_options_from_config_read_the_scir_section_and_the_judges_position_debias():
    cfg = load_config(
        "tiny",
        [
            "scir.beta=0.5",
            "scir.divergence=js",
            "scir.sft_weight=0.25",
            "judge.position_debias=none",
        ],
    )
    options = LossOptions.from_config(cfg)
    assert options.beta == 0.5 and options.sft_weight == 0.25
    assert options.divergence is Divergence.JS
    assert options.position_debias is PositionDebias.NONE
    for field in dataclasses.fields(LossOptions):
        section = cfg.judge if field.name == "position_debias" else cfg.scir
        assert getattr(options, field.name) == getattr(section, field.name), field.name


def test_option_strings_become_enum_members_and_unknown_values_are_refused_once():
    options = LossOptions(
        divergence="mse",
        consistency_grad="confident_teacher",
        pref_loss="ipo",
        pref_normalization="selected",
        position_debias="mean_logit",
    )
    assert options.divergence is Divergence.MSE
    assert options.consistency_grad is ConsistencyGrad.CONFIDENT_TEACHER
    assert options.pref_loss is PrefLoss.IPO
    assert options.pref_normalization is PrefNormalization.SELECTED
    with pytest.raises(ValueError, match=r"pref_loss='kto' is not one of \('dpo', 'ipo'\)"):
        LossOptions(pref_loss="kto")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.beta = 1.0


def test_every_loss_mode_is_registered_and_only_scir_reads_the_judge():
    assert set(LOSS_MODES) == set(LossMode)
    assert {mode for mode, spec in LOSS_MODES.items() if spec.judge_rows} == {LossMode.SCIR}
    assert loss_mode("dpo") is LOSS_MODES[LossMode.DPO]


def _pairs(**changes) -> PairTensors:
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(3, generator=g) for _ in range(6)]
    base = PairTensors(
        policy_logps=(x[0] - 20, x[1] - 20),
        ref_logps=(x[2] - 20, x[3] - 20),
        pair_labels=torch.tensor([1.0, 0.0, -1.0]),
        judge_logits=(x[4], x[5]),
    )
    return dataclasses.replace(base, **changes)


def test_mode_losses_call_the_scir_and_labelled_losses_with_the_pair_tensors():
    pairs, options = _pairs(), LossOptions()
    scir, _ = loss_mode("scir").loss(pairs, options)
    expected, _ = scir_loss(
        *pairs.policy_logps,
        *pairs.ref_logps,
        *pairs.judge_logits,
        options=options,
        gold_labels=pairs.pair_labels,
    )
    assert scir.item() == expected.item()
    for mode in ("dpo", "srlm"):
        labelled, _ = loss_mode(mode).loss(pairs, options)
        expected, _ = labelled_pair_loss(
            *pairs.policy_logps, *pairs.ref_logps, pairs.pair_labels, options=options
        )
        assert labelled.item() == expected.item()
    with pytest.raises(ValueError, match="reads the judge"):
        loss_mode("scir").loss(_pairs(judge_logits=None), options)
