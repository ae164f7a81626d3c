"""The suite's session check (megatron_scir/testing/no_orphans.py, loaded by tests/conftest.py):
a pytest session that leaves a process behind fails and names it, one that does not passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

LEAKING = '''
import subprocess, sys
from pathlib import Path

SLEEP = [sys.executable, "-c", "import time; time.sleep(300)"]


def test_leaves_a_child_running():
    proc = subprocess.Popen(SLEEP)
    Path("child").write_text(str(proc.pid))


def test_leaves_an_orphan_handed_to_init():
    # its parent exits at once: no longer a descendant of the session, found by its mark
    start = ("import subprocess as s, sys; "
             "print(s.Popen(sys.argv[1:], stdout=s.DEVNULL, stderr=s.DEVNULL).pid)")
    done = subprocess.run([sys.executable, "-c", start, *SLEEP], capture_output=True, text=True,
                          check=True)
    Path("orphan").write_text(done.stdout.strip())
'''

CLEAN = '''
import subprocess, sys


def test_waits_for_its_child():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
'''


def _session(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_inner.py").write_text(source)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "megatron_scir.testing.no_orphans", "--rootdir", str(tmp_path), "test_inner.py"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True,
        timeout=120,
    )


def test_a_session_that_leaves_processes_behind_fails_and_names_them(tmp_path):
    done = _session(tmp_path, LEAKING)
    pids = [int((tmp_path / name).read_text()) for name in ("child", "orphan")]
    try:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "2 passed" in done.stdout
        assert "2 process(es) left behind by the test session (now killed)" in done.stdout
        for pid in pids:
            assert f"pid {pid} " in done.stdout
            assert not _running(pid), f"pid {pid} was listed but not killed"
    finally:
        for pid in pids:
            if _running(pid):
                psutil.Process(pid).kill()


def test_a_session_that_waits_for_its_processes_passes(tmp_path):
    done = _session(tmp_path, CLEAN)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "left behind" not in done.stdout


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
