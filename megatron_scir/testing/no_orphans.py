"""A pytest plugin: a test session that leaves a process behind fails, naming it.

``tests/conftest.py`` loads it for the suite (``pytest -p megatron_scir.testing.no_orphans``
loads it anywhere else). At configure time the session puts its PID in the environment
(:data:`SESSION_MARK`); every process started from then on inherits it, also one whose parent
died and which the kernel handed to init, where a walk of the process tree no longer finds it.
After every other ``pytest_sessionfinish`` hook the plugin waits up to :data:`GRACE_S` seconds
for the session's descendants and for the processes carrying its mark; those still running are
listed, killed, and the session's exit status becomes ``TESTS_FAILED``. Not counted: zombies
(they have exited), and the session's own ``multiprocessing`` resource tracker and fork server,
which exit after the session process (when it closes their pipe). pytest-xdist stops its
workers in its own ``pytest_sessionfinish``, before the check; each worker checks its own
processes under its own mark, so workers do not flag each other.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable

import psutil
import pytest

SESSION_MARK = "MEGATRON_SCIR_TEST_SESSION"
"""Environment variable holding the PID of the pytest session a process was started under."""
GRACE_S = 5.0
"""How long the session's processes get to exit after the last test before they count."""
_OWN_SERVERS = ("multiprocessing.resource_tracker import main", "multiprocessing.forkserver import")
"""Command lines of the session's own multiprocessing servers: they end with the session."""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited: it only waits for its parent to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to exit; the ones still running."""
    pending = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        pending = [pid for pid in pending if alive(pid)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """The PIDs of ``pid``'s children, their children, and so on (empty once it is gone)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def session_processes(session_pid: int) -> list[int]:
    """Running descendants of ``session_pid`` and processes carrying its :data:`SESSION_MARK`."""
    found = set(descendants(session_pid))
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(SESSION_MARK) == str(session_pid):
                found.add(proc.pid)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    found.discard(session_pid)
    return sorted(pid for pid in found if alive(pid) and not _own_server(pid, session_pid))


def _own_server(pid: int, session_pid: int) -> bool:
    """A ``multiprocessing`` server of ``session_pid`` itself (it exits after the session)."""
    try:
        proc = psutil.Process(pid)
        command = " ".join(proc.cmdline())
        return proc.ppid() == session_pid and any(s in command for s in _OWN_SERVERS)
    except psutil.Error:
        return False


def describe(pid: int) -> str:
    """One line: PID, parent, age and command line of ``pid``."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            age = time.time() - proc.create_time()
            command = " ".join(proc.cmdline()) or proc.name()
            return f"pid {pid} (parent {proc.ppid()}, {age:.0f} s old): {command[:200]}"
    except psutil.Error:
        return f"pid {pid} (gone while listed)"


def pytest_configure(config: pytest.Config) -> None:
    os.environ[SESSION_MARK] = str(os.getpid())


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    result = yield
    check_session(session)
    return result


def check_session(session: pytest.Session) -> None:
    """Fail ``session`` (exit status 1) if processes it started are still running after
    :data:`GRACE_S` seconds: list them, kill them. Call it after every teardown."""
    left = wait_gone(session_processes(os.getpid()), GRACE_S)
    if left:
        lines = [describe(pid) for pid in left]
        for pid in left:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        _report(session, lines)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _report(session: pytest.Session, lines: list[str]) -> None:
    title = f"{len(lines)} process(es) left behind by the test session (now killed)"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print("\n".join([f"ERROR: {title}", *lines]), file=sys.stderr)
        return
    reporter.ensure_newline()
    reporter.write_sep("=", f"ERROR: {title}", red=True, bold=True)
    for line in lines:
        reporter.write_line(line)
