"""The parallel runtime: torch.distributed and Megatron's model-parallel state, set up once.

Every entry point (``scir generate``, ``scir convert``, the trainer, the iteration driver) enters
:func:`parallel_world` once and passes the :class:`Runtime` it yields down to what it calls::

    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        chunks = build_model_chunks(cfg)
        generate(runtime, chunks, tokenizer, prompts, out_path, cfg)   # no re-initialisation
        ...train on the same chunks, generate again...

Library functions take the runtime (or the groups it holds) and neither create nor destroy
parallel state. ``parallel_world`` tears down only what it created: inside a world someone else
initialised (a test harness, an outer driver) it checks the layout and leaves the world alone.

The groups come from Megatron-Core's :class:`~megatron.core.process_groups_config.
ProcessGroupCollection`, the object its newer APIs take (``pg_collection=``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.distributed as dist

from megatron_scir.config import ConfigError, ParallelConfig
from megatron_scir.config.derived import data_parallel_size
from megatron_scir.parallel import state

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The groups megatron-scir and the Megatron-Core pieces it drives (models, DDP, schedules) use.
REQUIRED_GROUPS = ("tp", "pp", "mp", "cp", "tp_cp", "dp", "dp_cp", "embd", "pos_embd")


@dataclass(frozen=True)
class Runtime:
    """This process's place in the parallel layout, and the process groups.

    Attributes:
        parallel: The layout the world was set up for.
        rank, world_size: Global rank and size.
        tp_rank, tp_size, pp_rank, pp_size, dp_rank, dp_size: Ranks and sizes per dimension.
        groups: Megatron-Core's ``ProcessGroupCollection`` (``groups.tp``, ``groups.pp``,
            ``groups.dp``, ...).
    """

    parallel: ParallelConfig
    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    groups: Any

    @property
    def tp_group(self) -> dist.ProcessGroup:
        return self.groups.tp

    @property
    def pp_group(self) -> dist.ProcessGroup:
        return self.groups.pp

    @property
    def dp_group(self) -> dist.ProcessGroup:
        return self.groups.dp

    @property
    def is_rank_zero(self) -> bool:
        """Global rank 0: the rank that writes shared files and prints summaries."""
        return self.rank == 0

    def is_first_stage(self, vp_stage: int | None = None) -> bool:
        """First pipeline stage (of virtual stage ``vp_stage`` under interleaving)."""
        return state.is_first_stage(vp_stage)

    def is_last_stage(self, vp_stage: int | None = None) -> bool:
        """Last pipeline stage (of virtual stage ``vp_stage``): where rewards and losses run."""
        return state.is_last_stage(vp_stage)

    def reseed(self, seed: int) -> None:
        """Seed every generator as :func:`parallel_world` does (``state.seed_generators``)."""
        state.seed_generators(seed)

    def on_rank_zero(self, fn: Callable[[], T]) -> T:
        """``fn()`` on global rank 0, its result (or its error, raised) on every rank.

        For decisions every rank must share (is a file there and valid?) and for files only
        rank 0 writes; collective.
        """
        result: list[Any] = [None]
        if self.is_rank_zero:
            try:
                result[0] = (fn(), None)
            except Exception as error:  # noqa: BLE001 — re-raised on every rank below
                result[0] = (None, error)
        if self.world_size > 1:
            dist.broadcast_object_list(result, src=0)
        value, error = result[0]
        if error is not None:
            raise error
        return value

    @classmethod
    def current(cls, parallel: ParallelConfig) -> Runtime:
        """The runtime of the initialised world and model-parallel state."""
        from megatron.core.process_groups_config import (  # lazy: Megatron-Core
            ProcessGroupCollection,
        )

        return cls(
            parallel=parallel,
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            tp_rank=state.tp_rank(),
            tp_size=state.tp_size(),
            pp_rank=state.pp_rank(),
            pp_size=state.pp_size(),
            dp_rank=state.dp_rank(),
            dp_size=state.dp_size(),
            groups=ProcessGroupCollection.use_mpu_process_groups(list(REQUIRED_GROUPS)),
        )


@contextmanager
def parallel_world(
    parallel: ParallelConfig, *, seed: int = 1234, timeout_s: int = 1800
) -> Iterator[Runtime]:
    """Set up torch.distributed and Megatron's model-parallel state for ``parallel``, once.

    torch.distributed comes from the launcher's environment (torchrun, srun, or a world of one;
    see :func:`megatron_scir.parallel.state.init_distributed`). On exit, tears down only what
    this call created; an already initialised world must have the same TP/PP layout.

    Args:
        parallel: The layout (TP, PP, virtual stages, backend).
        seed: Seed of Megatron's model-parallel RNG tracker.
        timeout_s: Collective timeout of a process group this call creates.

    Yields:
        The :class:`Runtime`.

    Raises:
        ConfigError: the world size does not divide into TP × PP, or an existing model-parallel
            state has another layout.
    """
    owns_world = not dist.is_initialized()
    exported = state.init_distributed(parallel.distributed_backend, timeout_s=timeout_s)
    owns_model_parallel = False
    try:
        data_parallel_size(parallel, dist.get_world_size())
        if state.model_parallel_is_initialized():
            _check_same_layout(parallel)
        else:
            state.initialize_model_parallel(parallel, seed=seed)
            owns_model_parallel = True
        yield Runtime.current(parallel)
    finally:
        if owns_model_parallel:
            state.destroy_model_parallel()
        if owns_world and dist.is_initialized():
            dist.destroy_process_group()
        for key in exported:  # a later child process must not think it is a rank of this world
            os.environ.pop(key, None)


def _check_same_layout(parallel: ParallelConfig) -> None:
    found = (state.tp_size(), state.pp_size())
    wanted = (parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size)
    if found != wanted:
        raise ConfigError(
            f"the model-parallel state is already initialised for TP={found[0]} PP={found[1]}, "
            f"not the configured TP={wanted[0]} PP={wanted[1]}: enter parallel_world once per "
            "process, with one layout"
        )
