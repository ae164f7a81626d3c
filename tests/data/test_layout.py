"""MicroBatchLayout: the rows and length of a SCIR micro-batch (SCIR_SPEC §9), and its checks."""

from __future__ import annotations

import pytest
import torch

from megatron_scir.config import load_config
from megatron_scir.data.layout import MicroBatchLayout

BUDGETS = [
    "train.micro_batch_size=3",
    "train.global_batch_size=6",
    "data.max_prompt_length=32",
    "data.max_response_length=48",
    "data.judge_max_length=256",
]


def layout(*overrides: str, with_judge: bool | None = None) -> MicroBatchLayout:
    cfg = load_config("tiny", [*BUDGETS, *overrides])
    if with_judge is None:  # the loss mode's training layout
        return MicroBatchLayout.for_training(cfg)
    return MicroBatchLayout.from_config(cfg, with_judge=with_judge)


@pytest.mark.parametrize(
    ("overrides", "judge_rows_per_pair"),
    [
        ([], 2),
        (["judge.position_debias=mean_logit"], 2),
        (["judge.position_debias=none"], 1),
        (["judge.kind=pointwise"], 2),
        (["judge.kind=pointwise", "judge.position_debias=none"], 2),
        (["scir.mode=dpo"], 0),
        (["scir.mode=srlm"], 0),
    ],
)
def test_judge_rows_follow_the_judge_format_and_the_loss_mode(overrides, judge_rows_per_pair):
    got = layout(*overrides)
    assert got.judge_rows_per_pair == judge_rows_per_pair
    assert got.num_rows == 3 * (2 + judge_rows_per_pair)
    assert got.num_judge_rows == 3 * judge_rows_per_pair
    assert got.seq_length == (256 if judge_rows_per_pair else 32 + 48)


def test_with_judge_overrides_what_the_loss_mode_needs():
    assert layout("scir.mode=dpo", with_judge=True).judge_rows_per_pair == 2
    assert layout(with_judge=False).judge_rows_per_pair == 0


@pytest.mark.parametrize(("mode", "training", "reference"), [
    ("scir", 2, 2), ("srlm", 0, 2), ("dpo", 0, 0),
])
def test_the_mode_spec_decides_the_training_and_reference_judge_rows(mode, training, reference):
    cfg = load_config("tiny", [*BUDGETS, f"scir.mode={mode}"])
    assert MicroBatchLayout.for_training(cfg).judge_rows_per_pair == training
    assert MicroBatchLayout.for_reference(cfg).judge_rows_per_pair == reference


def test_the_layout_is_torch_free_as_scir_plan_reads_it():
    import subprocess
    import sys

    code = (
        "import sys; import megatron_scir.data.layout, megatron_scir.losses.modes; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_seq_length_is_the_policy_budget_alone_without_judge_rows_else_the_larger_budget():
    assert layout("data.judge_max_length=64").seq_length == 32 + 48  # policy budget is larger
    full = layout()
    assert full.seq_length == 256
    reference = layout(with_judge=False)
    assert reference.judge_rows_per_pair == 0 and reference.seq_length == 80
    assert reference.num_rows == 6 and reference.num_pairs == 3


def test_row_slices_are_y1_then_y2_then_each_judge_order():
    got = layout()
    rows = list(range(got.num_rows))
    assert rows[got.policy_rows] == [0, 1, 2, 3, 4, 5]
    assert rows[got.policy_side_rows(0)] == [0, 1, 2]
    assert rows[got.policy_side_rows(1)] == [3, 4, 5]
    assert rows[got.judge_rows] == [6, 7, 8, 9, 10, 11]
    assert rows[got.judge_order_rows(0)] == [6, 7, 8]
    assert rows[got.judge_order_rows(1)] == [9, 10, 11]


def _batch(rows: int, k: int, judge_rows: int) -> dict[str, torch.Tensor]:
    return {
        "tokens": torch.zeros(rows, 16, dtype=torch.long),
        "ref_logps": torch.zeros(2 * k),
        "response_lengths": torch.ones(2 * k, dtype=torch.long),
        "pair_labels": torch.zeros(k),
        "verdict_positions": torch.zeros(judge_rows, dtype=torch.long),
    }


def test_validate_accepts_the_layout_and_names_every_mismatch():
    got = layout()
    got.validate(_batch(12, 3, 6))
    bad = _batch(11, 3, 5)
    del bad["ref_logps"]
    with pytest.raises(ValueError) as err:
        got.validate(bad)
    message = str(err.value)
    assert "k=3 pairs and 6 judge rows (SCIR_SPEC §9" in message
    assert "tokens (11, 16): expected [12, S]" in message
    assert "verdict_positions has 5 entries: expected 6" in message
    assert "ref_logps missing: run the reference pass first" in message
    layout(with_judge=False).validate(
        {k: v for k, v in _batch(6, 3, 0).items() if k != "ref_logps"}, require_ref_logps=False
    )
