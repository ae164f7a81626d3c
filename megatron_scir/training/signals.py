"""Preemption: SIGTERM and SIGUSR1 ask the trainer to save and stop after the current step.

Slurm sends SIGUSR1 ``--signal=USR1@<seconds>`` before the time limit and SIGTERM before a
preemption. The handler only records the request; the trainer checks it between steps, agreed
over the world (a signal may reach the ranks at different moments), saves a complete checkpoint
and exits with :data:`EXIT_PREEMPTED`. A second signal while saving changes nothing (the request
is already recorded, and checkpoints are only renamed into place when complete).

Requests nest: ``scir iterate`` holds one for the whole run (stages check it between stages and
between generation chunks) and the trainer opens its own inside. An inner request starts with
what the outer one has already received and passes every signal on to it.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 75
"""Exit status of a run stopped by SIGTERM/SIGUSR1 after saving (EX_TEMPFAIL: requeue it)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Records SIGTERM/SIGUSR1 while installed (a context manager restoring the old handlers)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
        outer = self._previous.get(signum)
        if isinstance(getattr(outer, "__self__", None), StopRequest):
            outer(signum, frame)  # the enclosing request records it too

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
            outer = getattr(self._previous[sig], "__self__", None)
            if isinstance(outer, StopRequest) and self.signal_name is None:
                self.signal_name = outer.signal_name
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, group: dist.ProcessGroup | None = None) -> bool:
        """Whether any rank of ``group`` (default: the world) received a stop signal.

        Collective: every rank calls it at the same point of the loop.
        """
        device = "cuda" if torch.cuda.is_available() else "cpu"  # NCCL reduces device tensors
        flag = torch.tensor([1.0 if self.signal_name else 0.0], device=device)
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item())
