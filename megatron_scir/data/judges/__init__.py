"""Judge formats, one per ``judge.kind`` (SCIR_SPEC §2): templates, rendering, candidate ids.

``JUDGE_FORMATS`` maps each :class:`~megatron_scir.config.choices.JudgeKind` to its class;
:func:`judge_format` builds the configured one. A new kind is a module here with a
:class:`JudgeFormat` subclass, its ``JudgeKind`` member and its entry below.
"""

from __future__ import annotations

from megatron_scir.config import JudgeConfig
from megatron_scir.config.choices import JudgeKind
from megatron_scir.data.judges.base import JudgeFormat
from megatron_scir.data.judges.pairwise import PairwiseJudge
from megatron_scir.data.judges.pointwise import PointwiseJudge

__all__ = ["JUDGE_FORMATS", "JudgeFormat", "PairwiseJudge", "PointwiseJudge", "judge_format"]

JUDGE_FORMATS: dict[JudgeKind, type[JudgeFormat]] = {
    JudgeKind.PAIRWISE: PairwiseJudge,
    JudgeKind.POINTWISE: PointwiseJudge,
}


def judge_format(judge: JudgeConfig) -> JudgeFormat:
    """The judge format of ``judge.kind``, configured by the ``judge`` section."""
    return JUDGE_FORMATS[JudgeKind(judge.kind)](judge)
