"""The self-rewarding loop (``scir iterate``), its evaluation (``scir evaluate``) and reports.

- :func:`run_iterations` (:mod:`~megatron_scir.iteration.driver`) — seed SFT, then per
  iteration generate → pairs → reference pass → train → export → evaluate, in one parallel
  runtime, resumable stage by stage (:mod:`~megatron_scir.iteration.stages`);
- :func:`reward_accuracy`, :func:`greedy_answers`, :func:`grade_answers`, :func:`load_grader`
  (:mod:`~megatron_scir.iteration.evaluate`) — the reward-modelling ability of a model on
  labelled pairs and greedy answers for a grader;
- :mod:`~megatron_scir.iteration.report` — tables, seed aggregation, PNG plots.

Imported on first use: ``import megatron_scir.iteration`` imports neither torch nor Megatron.
"""

from __future__ import annotations

from megatron_scir._lazy import lazy_exports

_EXPORTS = {
    "Preempted": "megatron_scir.iteration.driver",
    "run_iterations": "megatron_scir.iteration.driver",
    "RewardAccuracy": "megatron_scir.iteration.evaluate",
    "OracleScore": "megatron_scir.iteration.evaluate",
    "reward_accuracy": "megatron_scir.iteration.evaluate",
    "greedy_answers": "megatron_scir.iteration.evaluate",
    "grade_answers": "megatron_scir.iteration.evaluate",
    "load_grader": "megatron_scir.iteration.evaluate",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
