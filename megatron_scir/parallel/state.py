"""The bridge from Megatron's global ``parallel_state``: the only module that reads it.

Entry points do not call these functions directly: they enter
:func:`megatron_scir.parallel.runtime.parallel_world` once, which uses them and yields a
:class:`~megatron_scir.parallel.runtime.Runtime` holding the ranks and process groups that the
rest of the package takes explicitly. Math functions take explicit groups (``tp_group=``).
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Mapping
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from megatron_scir.config import ParallelConfig
from megatron_scir.config.choices import Backend


def resolve_backend(backend: str) -> Backend:
    """``parallel.distributed_backend`` as it runs: ``auto`` is NCCL with CUDA, gloo without."""
    if backend == Backend.AUTO:
        return Backend.NCCL if torch.cuda.is_available() else Backend.GLOO
    return Backend(backend)


def init_distributed(backend: str = "auto", *, timeout_s: int = 1800) -> dict[str, str]:
    """Initialise torch.distributed from the launcher's env vars (torchrun, srun), once.

    ``auto`` picks NCCL when CUDA is available and gloo (plus the CPU compatibility layer)
    otherwise. A single process without launcher env vars gets a world of one.

    Returns:
        The env vars this call exported for ``init_process_group`` (Slurm's translated to
        torch's, or a world of one's): the caller removes them when it tears the world down, so
        a child process it starts later is not taken for a rank of this world.
    """
    if dist.is_initialized():
        return {}
    backend = resolve_backend(backend)
    if backend == Backend.GLOO and not torch.cuda.is_available():
        from megatron_scir.parallel import cpu_compat  # lazy: GPU runs never import the CPU layer

        cpu_compat.enable()
    exported = launcher_env(os.environ)
    os.environ.update(exported)
    if backend == Backend.NCCL:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return exported


def launcher_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The torch.distributed env vars for how this process was launched.

    torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` itself (nothing to add).
    Under ``srun`` (one task per GPU) they come from Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/
    ``SLURM_LOCALID``; ``MASTER_ADDR`` must then be exported by the batch script (the first node
    of ``SLURM_JOB_NODELIST``). A bare single process gets a world of one on a free local port.
    """
    if "RANK" in environ:
        return {}
    if "SLURM_PROCID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
        if "MASTER_ADDR" not in environ:
            raise RuntimeError(
                "launched by srun without MASTER_ADDR: export MASTER_ADDR=$(scontrol show "
                "hostnames $SLURM_JOB_NODELIST | head -n 1) (and MASTER_PORT) in the batch script"
            )
        return {
            "RANK": environ["SLURM_PROCID"],
            "WORLD_SIZE": environ["SLURM_NTASKS"],
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
            "MASTER_PORT": environ.get("MASTER_PORT", "29500"),
        }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def launched_world_size(environ: Mapping[str, str] | None = None) -> int:
    """The world size the launcher started (torchrun, srun, or 1), before any process group."""
    environ = os.environ if environ is None else environ
    return int(environ.get("WORLD_SIZE") or launcher_env(environ)["WORLD_SIZE"])


def initialize_model_parallel(parallel: ParallelConfig, *, seed: int = 1234) -> None:
    """Create Megatron's TP/PP/DP groups for ``parallel`` and seed every generator.

    As Megatron-LM's ``_set_random_seed``: Python, NumPy and torch get ``seed + 100 · pp_rank``
    (so a random initialisation is the same on every run and every DP replica), and Megatron's
    model-parallel RNG tracker its TP/PP offsets of ``seed``.
    """
    from megatron.core import parallel_state  # lazy: Megatron-Core

    vpp = parallel.virtual_pipeline_model_parallel_size
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=vpp if vpp and vpp > 1 else None,
    )
    seed_generators(seed)


def seed_generators(seed: int) -> None:
    """Seed Python, NumPy and torch with ``seed + 100 · pp_rank`` and Megatron's model-parallel
    RNG tracker with its TP/PP offsets of ``seed`` (the model-parallel state must exist).

    Called once when the world is set up, and by the iteration driver at the start of every
    stage, so a stage gives the same bits whether it runs after another one in the same process
    or first in a rerun.
    """
    from megatron.core import parallel_state, tensor_parallel  # lazy: Megatron-Core

    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    if torch.cuda.is_available():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        from megatron_scir.parallel import cpu_compat  # lazy: GPU runs never import the CPU layer

        cpu_compat.seed_rng_tracker(
            seed,
            tp_rank=parallel_state.get_tensor_model_parallel_rank(),
            pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        )


def model_parallel_is_initialized() -> bool:
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.model_parallel_is_initialized()


def destroy_model_parallel() -> None:
    from megatron.core import parallel_state  # lazy: Megatron-Core

    parallel_state.destroy_model_parallel()


def tp_group():
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.get_tensor_model_parallel_group()


def dp_group():
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.get_data_parallel_group()


def pp_group():
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.get_pipeline_model_parallel_group()


def tp_rank() -> int:
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.get_tensor_model_parallel_rank()


def tp_size() -> int:
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.get_tensor_model_parallel_world_size()


def pp_rank() -> int:
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.get_pipeline_model_parallel_rank()


def pp_size() -> int:
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.get_pipeline_model_parallel_world_size()


def dp_rank() -> int:
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.get_data_parallel_rank()


def dp_size() -> int:
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.get_data_parallel_world_size()


def is_first_stage(vp_stage: int | None = None) -> bool:
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.is_pipeline_first_stage(
        ignore_virtual=vp_stage is None, vp_stage=vp_stage
    )


def is_last_stage(vp_stage: int | None = None) -> bool:
    from megatron.core import parallel_state  # lazy: Megatron-Core

    return parallel_state.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
