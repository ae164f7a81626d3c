"""Judge rows per pair of each judge kind (SCIR_SPEC §9), torch-free.

The one answer to "how many judge sequences does a pair get": read by the formats
(``JudgeFormat.rows_per_pair``), the micro-batch layout and ``scir plan``.
"""

from __future__ import annotations

from megatron_scir.config import JudgeConfig
from megatron_scir.config.choices import JudgeKind, PositionDebias


def judge_rows_per_pair(judge: JudgeConfig) -> int:
    """Pairwise: 2 (both orders), or 1 with ``judge.position_debias=none``; pointwise: 2 (one
    sequence per response)."""
    if JudgeKind(judge.kind) == JudgeKind.POINTWISE:
        return 2
    return 1 if judge.position_debias == PositionDebias.NONE else 2
