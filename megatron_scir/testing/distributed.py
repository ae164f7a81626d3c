"""Run a function in N gloo processes (tests, benchmarks): free port, timeout, child tracebacks.

    def body(rank, world_size, tp):
        ...
        return some_picklable_value

    results = run_distributed(body, world_size=2, args=(2,))

Each child: CPU compatibility layer enabled (when CUDA is absent), ``torch.distributed`` initialised
with gloo, deterministic single-threaded torch; the parent waits, and re-raises the first child's
failure with the child's own traceback. A child that hangs past ``timeout`` is killed and the
error says which ranks were still running.

Gloo accepts non-contiguous tensors where NCCL refuses them, so by default every child also
enforces NCCL's rule (``strict_collectives=True``:
``megatron_scir.parallel.cpu_compat.enforce_contiguous_collectives``): a collective given a
strided view fails the test with an error naming the collective, as it would fail on GPUs.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class DistributedTestError(RuntimeError):
    """A rank failed or timed out; the message holds the child's traceback."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(
    rank: int,
    world_size: int,
    port: int,
    result_dir: str,
    fn: Callable,
    args: Sequence,
    env: dict[str, str],
    strict_collectives: bool,
) -> None:
    os.environ.update(env)
    # Megatron warns about missing apex/TE and its deprecations once per process; keep the
    # children's output to what a failing test needs
    warnings.filterwarnings("ignore")
    logging.getLogger("megatron").setLevel(logging.ERROR)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    out = os.path.join(result_dir, f"rank{rank}.pt")
    try:
        if not torch.cuda.is_available():
            from megatron_scir.parallel import cpu_compat  # lazy: GPU runs never import it

            cpu_compat.enable()
            if strict_collectives:
                cpu_compat.enforce_contiguous_collectives()
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        value = fn(rank, world_size, *args)
        torch.save({"ok": True, "value": value}, out)
    except BaseException:  # noqa: BLE001 — everything goes back to the parent
        torch.save({"ok": False, "error": traceback.format_exc()}, out)
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            try:
                from megatron.core import parallel_state  # lazy: Megatron-Core

                parallel_state.destroy_model_parallel()
            except Exception:  # noqa: BLE001 — teardown must not hide the result
                pass
            dist.destroy_process_group()


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence = (),
    *,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
    strict_collectives: bool = True,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned gloo processes.

    Args:
        fn: a picklable (module-level) function, run on every rank.
        world_size: the number of processes.
        args: extra positional arguments of ``fn`` (picklable).
        timeout: seconds for the whole run; ranks still running then are killed.
        env: environment variables set in every child.
        strict_collectives: collectives refuse non-contiguous tensors, as NCCL does (CPU runs;
            on GPUs NCCL checks itself). Turn off only to show what gloo alone accepts.

    Returns:
        The return values of ``fn`` by rank (they must be picklable with ``torch.save``).

    Raises:
        DistributedTestError: a rank raised (its traceback is in the message) or the run timed out.
    """
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="scir-dist-") as result_dir:
        port = free_port()
        procs = [
            ctx.Process(
                target=_child,
                args=(
                    r,
                    world_size,
                    port,
                    result_dir,
                    fn,
                    tuple(args),
                    dict(env or {}),
                    strict_collectives,
                ),
                daemon=False,
            )
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        _join(procs, timeout)
        return _collect(procs, result_dir, world_size)


def _join(procs: list, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode not in (None, 0):
            break  # one rank failed: the others may wait on it forever
    alive = [i for i, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    if alive and all(p.exitcode in (0, -9) for p in procs) and time.monotonic() >= deadline:
        raise DistributedTestError(f"timed out after {timeout:.0f}s; ranks {alive} still running")


def _collect(procs: list, result_dir: str, world_size: int) -> list[Any]:
    results, errors = [], []
    for rank in range(world_size):
        path = os.path.join(result_dir, f"rank{rank}.pt")
        if not os.path.exists(path):
            errors.append(f"rank {rank}: exited with code {procs[rank].exitcode} and no result")
            continue
        record = torch.load(path, weights_only=False)
        if record["ok"]:
            results.append(record["value"])
        else:
            errors.append(f"rank {rank} failed:\n{record['error']}")
    if errors:
        first_real = [e for e in errors if "failed:" in e] or errors
        # the first rank to fail closes its connections and its peers then fail in gloo: the
        # cause first, those consequences after it
        first_real.sort(key=lambda e: "Connection closed by peer" in e)
        raise DistributedTestError("\n".join(first_real))
    return results
