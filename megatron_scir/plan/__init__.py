"""``scir plan``: the per-GPU memory of SCIR training and generation for a config and a cluster.

Torch-free (it reads the config tree and :mod:`megatron_scir.models.shapes` only), so it runs on
a login node before a job is queued. :func:`plan_memory` returns a :class:`MemoryPlan`;
:func:`format_plan` renders it. The formulas and their sources: :mod:`megatron_scir.plan.memory`
and docs/plan.md.
"""

from __future__ import annotations

from megatron_scir.plan.memory import MemoryPlan, StageMemory, format_plan, plan_memory

__all__ = ["MemoryPlan", "StageMemory", "format_plan", "plan_memory"]
