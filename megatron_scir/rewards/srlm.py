"""SRLM's fixed labels: the M_t judge's verdict, read once when the pairs are built (SCIR_SPEC §6).

The ``srlm`` baseline does not train against the judge: it labels every pair once with the
iteration's starting model M_t (both presentation orders, the same ``judge.position_debias`` as
SCIR), drops the pairs the judge is unsure about and then runs plain DPO on those labels. This is
a no-grad judge step, not a loss.
"""

from __future__ import annotations

import torch

from megatron_scir.config.choices import PositionDebias
from megatron_scir.rewards.judge import judge_preference

__all__ = ["srlm_labels"]


@torch.no_grad()
def srlm_labels(
    judge_logits_12: torch.Tensor,
    judge_logits_21: torch.Tensor | None = None,
    *,
    position_debias: PositionDebias = PositionDebias.MEAN_PROB,
    drop_margin: float = 0.0,
) -> torch.Tensor:
    """SRLM's labels from the M_t judge's log-odds (SCIR_SPEC §6).

    Args:
        judge_logits_12, judge_logits_21: ``[n]`` the M_t judge's log-odds in both orders (see
            :func:`megatron_scir.rewards.judge.judge_preference`).
        position_debias: how the two orders combine (``judge.position_debias``).
        drop_margin: pairs with |P_G − ½| ≤ this get no label (``scir.srlm_drop_margin``).

    Returns:
        ``[n]`` float32 ``pair_labels``: 1.0 where y1 ≻ y2, 0.0 where y2 ≻ y1, −1.0 dropped.
    """
    log_p, log_q = judge_preference(
        judge_logits_12, judge_logits_21, position_debias=position_debias
    )
    centered = 0.5 * (log_p.exp() - log_q.exp())
    labels = (centered > 0).float()
    return torch.where(centered.abs() > drop_margin, labels, torch.full_like(labels, -1.0))
