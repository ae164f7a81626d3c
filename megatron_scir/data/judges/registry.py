"""``JUDGE_FORMATS``: each :class:`~megatron_scir.config.choices.JudgeKind` and its format."""

from __future__ import annotations

from megatron_scir.config import JudgeConfig
from megatron_scir.config.choices import JudgeKind
from megatron_scir.data.judges.base import JudgeFormat
from megatron_scir.data.judges.pairwise import PairwiseJudge
from megatron_scir.data.judges.pointwise import PointwiseJudge

JUDGE_FORMATS: dict[JudgeKind, type[JudgeFormat]] = {
    JudgeKind.PAIRWISE: PairwiseJudge,
    JudgeKind.POINTWISE: PointwiseJudge,
}


def judge_format(judge: JudgeConfig) -> JudgeFormat:
    """The judge format of ``judge.kind``, configured by the ``judge`` section."""
    return JUDGE_FORMATS[JudgeKind(judge.kind)](judge)
