"""Judge formats, one per ``judge.kind`` (SCIR_SPEC §2): templates, rendering, candidate ids.

``JUDGE_FORMATS`` maps each :class:`~megatron_scir.config.choices.JudgeKind` to its class;
:func:`judge_format` builds the configured one. A new kind is a module here with a
:class:`JudgeFormat` subclass, its ``JudgeKind`` member, its entry in ``registry.py`` and its
rows per pair in ``rows.py`` (torch-free, read by the layout and ``scir plan``). Names are
imported on first use (PEP 562), so ``judges.rows`` imports no torch.
"""

from __future__ import annotations

from megatron_scir._lazy import lazy_exports

_EXPORTS = {
    "JUDGE_FORMATS": "registry",
    "judge_format": "registry",
    "JudgeFormat": "base",
    "PairwiseJudge": "pairwise",
    "PointwiseJudge": "pointwise",
    "judge_rows_per_pair": "rows",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
