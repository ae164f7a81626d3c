"""Helper processes exit with the rank that started them (parallel/child_processes.py).

Real processes and real signals throughout: an encoding pool whose rank is SIGKILLed, a pool
ended by its own rank under the trainer's stop handler, and an orphaned Manager on the fallback
path (no parent-death signal), ended by SIGTERM or by its watch thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from megatron_scir.data.encode import TruncationStats
from megatron_scir.data.encode_pool import encode_records
from megatron_scir.testing.no_orphans import alive, wait_gone
from megatron_scir.training.signals import StopRequest

ROOT = Path(__file__).resolve().parents[2]


class _Encoder:
    """Stands in for a SequenceEncoder: ``instruction`` waits ``seconds``, then echoes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.stats = TruncationStats()

    def instruction(self, record):
        time.sleep(self.seconds)
        return record


def _start(code: str, *args: str) -> subprocess.Popen:
    """``python -c code args`` from the repository root, in a session of its own."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": path},
        stdout=subprocess.DEVNULL, start_new_session=True,
    )


def _wait_for(path: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path.name} appeared"
        time.sleep(0.05)
    return path.read_text()


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _encoding_rank(out: str) -> None:
    """A rank that encodes with two workers, each stuck in a record for ten minutes."""
    Path(out, "rank").write_text(str(os.getpid()))
    encode_records(_Encoder(600), "instruction", list(range(8)), num_workers=2)


def test_encoding_workers_die_with_their_sigkilled_rank(tmp_path):
    rank = _start(f"import sys; from {__name__} import _encoding_rank; _encoding_rank(sys.argv[1])",
                  str(tmp_path))
    workers: list[int] = []
    try:
        _wait_for(tmp_path / "rank")
        deadline = time.monotonic() + 60
        while len(workers) < 2:
            assert rank.poll() is None and time.monotonic() < deadline, "no encoding workers"
            workers = [p.pid for p in psutil.Process(rank.pid).children()]
            time.sleep(0.05)
        time.sleep(0.5)  # both busy with a record
        os.kill(rank.pid, signal.SIGKILL)  # the rank alone, not its process group
        rank.wait(timeout=30)
        assert not wait_gone(workers, timeout=5), "encoding workers outlived their rank"
    finally:
        _kill([rank.pid, *workers])
        rank.wait(timeout=30)


@pytest.mark.timeout(120)
def test_a_pool_under_the_trainers_stop_handler_is_ended_by_its_rank():
    # Forked workers inherit the rank's handlers: under StopRequest they used to swallow the
    # SIGTERM of Pool.terminate, and leaving the pool could wait for them for ever.
    with StopRequest() as stop:
        for _ in range(40):
            assert encode_records(_Encoder(0), "instruction", list(range(8)), 2) == list(range(8))
    assert stop.signal_name is None  # the workers' SIGTERMs never reached the rank's handler


_ORPHANED_MANAGER = """
import os, sys
import psutil
from megatron_scir.parallel.child_processes import start_manager
manager = start_manager(parent_death_signal=False, watch_interval=float(sys.argv[2]))
server = [p.pid for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]
open(sys.argv[1], "w").write(" ".join(map(str, server)))
os._exit(0)  # no shutdown: the server is left to itself
"""


def _orphaned_manager(tmp_path: Path, watch_interval: float) -> int:
    """The PID of a Manager server whose rank exited without stopping it (fallback path)."""
    rank = _start(_ORPHANED_MANAGER, str(tmp_path / "server"), str(watch_interval))
    assert rank.wait(timeout=120) == 0
    (server,) = [int(pid) for pid in _wait_for(tmp_path / "server").split()]
    return server


def test_sigterm_ends_a_helper_whose_rank_is_gone(tmp_path):
    server = _orphaned_manager(tmp_path, watch_interval=3600)  # the watch thread sleeps
    try:
        time.sleep(1)
        assert alive(server), "the orphan ended by itself: nothing left to test"
        os.kill(server, signal.SIGTERM)
        assert not wait_gone([server], timeout=5), "SIGTERM did not end an orphaned helper"
    finally:
        _kill([server])


def test_without_a_parent_death_signal_the_watch_thread_ends_an_orphan(tmp_path):
    server = _orphaned_manager(tmp_path, watch_interval=0.1)
    try:
        assert not wait_gone([server], timeout=5), "the watch thread did not end the orphan"
    finally:
        _kill([server])
