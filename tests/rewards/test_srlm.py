"""SRLM's fixed labels from the M_t judge (SCIR_SPEC §6)."""

from __future__ import annotations

import math

import torch

from megatron_scir.rewards import srlm_labels


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_srlm_labels_follow_the_debiased_judge_and_drop_unsure_pairs():
    # P_G = ½(σ(ℓ12) + σ(−ℓ21)): pair 0 is 0.75 (y1), pair 1 0.25 (y2), pair 2 exactly ½,
    # pair 3 prefers y1 by less than the drop margin.
    judge_12 = _t(math.log(3.0), -math.log(3.0), 0.0, 0.1)
    judge_21 = _t(-math.log(3.0), math.log(3.0), 0.0, -0.1)
    labels = srlm_labels(judge_12, judge_21, drop_margin=0.05)
    assert labels.tolist() == [1.0, 0.0, -1.0, -1.0]
    assert srlm_labels(judge_12, judge_21).tolist() == [1.0, 0.0, -1.0, 1.0]


def test_srlm_labels_with_one_judge_order_read_sigma_of_its_log_odds():
    judge_12 = _t(2.0, -2.0, 0.0)
    labels = srlm_labels(judge_12, position_debias="none")
    assert labels.tolist() == [1.0, 0.0, -1.0]
    assert not labels.requires_grad
