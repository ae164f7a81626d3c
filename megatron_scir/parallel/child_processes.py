"""Helper processes that live exactly as long as the rank that started them.

A rank starts helpers through ``multiprocessing``: the checkpoint writer's results Manager
(:mod:`megatron_scir.checkpoint.io`) and the setup-time encoding pool
(:mod:`megatron_scir.data.encode_pool`). Left alone, a helper outlives a rank killed by SIGKILL
(an OOM kill, ``scancel``, a test): nothing tells it its parent is gone, and a Manager server
waits for clients for ever. :func:`exit_with_parent`, given as the helper's initializer, ties it
to its rank:

- the kernel SIGKILLs it when the rank dies (Linux ``prctl(PR_SET_PDEATHSIG)``); where that is
  unavailable a daemon thread watches the parent instead and ends the helper within
  ``watch_interval`` seconds;
- SIGTERM and SIGUSR1 end it once its rank is gone, and, for a pool worker, when its rank sends
  them (``Pool.terminate``). Sent by anyone else while the rank lives they are ignored: Slurm's
  ``--signal`` and ``scancel --signal`` reach every process of a job step, and a helper dying of
  the signal that asked its rank to save would fail that save (a Manager) or hang the pool that
  lost its task (a worker). The rank decides; the helper follows it. A thread of the helper
  takes both signals with ``sigwaitinfo``, which names the sender; where that call is missing
  (macOS) they keep their default action;
- no handler or blocked signal is inherited from the rank: a forked worker would otherwise
  swallow SIGTERM in the rank's stop handler (and ``Pool.terminate`` wait for it for ever), and a
  Manager started while the rank blocked SIGTERM ignored it for good. The rank starts helpers
  with both signals deferred (:func:`stop_signals_deferred`), so one that arrives before the
  helper's thread takes over waits for that thread instead of killing the helper or reaching an
  inherited handler.

Linux sends the parent-death signal when the *thread* that started the helper exits, so start
helpers from a thread that lives as long as the rank needs them (the main thread does).
Torch-free; composes through ``multiprocessing``'s own hooks (a Manager's or Pool's initializer).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing import resource_tracker
from multiprocessing.context import BaseContext
from multiprocessing.managers import SyncManager

PR_SET_PDEATHSIG = 1
"""``prctl`` option: the signal this process gets when its parent (thread) dies (linux/prctl.h)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""Signals a scheduler sends to every process of a job (the trainer's stop requests)."""
WATCH_INTERVAL_S = 0.5
"""How often the fallback watch thread checks the parent where ``prctl`` is unavailable."""


def exit_with_parent(
    parent_pid: int,
    stop_from_parent: bool = False,
    parent_death_signal: bool = True,
    watch_interval: float = WATCH_INTERVAL_S,
) -> None:
    """Tie this (helper) process to ``parent_pid``: the first thing a helper runs.

    Args:
        parent_pid: the rank that started this process (``os.getpid()`` there).
        stop_from_parent: SIGTERM/SIGUSR1 sent by the rank end this process (a pool worker,
            which ``Pool.terminate`` ends by SIGTERM); otherwise only once the rank is gone.
        parent_death_signal: use the kernel's parent-death signal where it exists; False always
            uses the watch thread.
        watch_interval: seconds between the watch thread's checks (fallback only).
    """
    follow_stop_signals(parent_pid, stop_from_parent)
    if not (parent_death_signal and set_parent_death_signal(signal.SIGKILL)):
        watch_parent(parent_pid, watch_interval)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(0)


def start_manager(context: BaseContext | None = None, **tie) -> SyncManager:
    """A started ``multiprocessing`` Manager whose server process exits with this process.

    Args:
        context: the ``multiprocessing`` context (default ``spawn``: safe after CUDA and threads).
        tie: further keyword arguments of :func:`exit_with_parent`.
    """
    context = context or multiprocessing.get_context("spawn")
    manager = SyncManager(ctx=context)
    with stop_signals_deferred():
        if context.get_start_method() != "fork":
            # CPython starts its resource tracker with the first spawned process (a helper too:
            # it exits once its pipe closes) and then unblocks SIGTERM in this thread, which
            # would let the Manager start without the deferral: start it first, block again
            resource_tracker.ensure_running()
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        manager.start(functools.partial(exit_with_parent, os.getpid(), **tie))
    return manager


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Block SIGTERM/SIGUSR1 in this thread while it starts helpers (they inherit the mask).

    This process only defers them for the start (they are delivered after, not lost); a helper
    keeps them pending until :func:`follow_stop_signals` takes them. Threads started inside keep
    the mask for good: ``Pool``'s handler threads, which start replacement workers, do.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def follow_stop_signals(parent_pid: int, stop_from_parent: bool = False) -> None:
    """SIGTERM/SIGUSR1 end this process once ``parent_pid`` is gone (or, with
    ``stop_from_parent``, when it sent them); from anyone else while it lives they are ignored.

    Call it from the main thread before other threads start: they inherit its signal mask.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    if not hasattr(signal, "sigwaitinfo"):
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        return
    signal.pthread_sigmask(signal.SIG_SETMASK, set(STOP_SIGNALS))

    def wait() -> None:
        while True:
            info = signal.sigwaitinfo(STOP_SIGNALS)
            if os.getppid() != parent_pid or (stop_from_parent and info.si_pid == parent_pid):
                os._exit(128 + info.si_signo)

    threading.Thread(target=wait, name="stop-signals", daemon=True).start()


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(parent_pid: int, interval: float = WATCH_INTERVAL_S) -> threading.Thread:
    """Start a daemon thread that ends this process once ``parent_pid`` is no longer its parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(0)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
