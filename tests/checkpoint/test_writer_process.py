"""The checkpoint writer's helper processes (dist_checkpointing's Manager and the resource
tracker of its start) die with their rank and live through stop signals sent by others.

A real rank (a subprocess: a gloo world of one, the tiny model, ``save_checkpoint``) saves once.
SIGKILLed alone, as the OOM killer would, its helpers must be gone within seconds (the Manager
used to stay for ever: 775 MB, SIGTERM blocked). Given Slurm-style SIGTERM/SIGUSR1 from outside,
they must stay, and the rank saves again (a Manager killed by SIGTERM broke that save).
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

from megatron_scir.testing.distributed import free_port
from megatron_scir.testing.no_orphans import alive, wait_gone

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[2]


def _rank(out: str, port: str) -> None:
    """The rank: save, report its helpers, save again when asked, then wait to be killed."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist

    from megatron_scir.checkpoint import save_checkpoint
    from megatron_scir.config import load_config
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.state import initialize_model_parallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", WORLD_SIZE="1")
    torch.set_num_threads(1)
    if not torch.cuda.is_available():
        from megatron_scir.parallel import cpu_compat

        cpu_compat.enable()
    dist.init_process_group("gloo", rank=0, world_size=1)
    cfg = load_config("tiny", [])
    initialize_model_parallel(cfg.parallel)
    chunks = build_model_chunks(cfg)
    root = Path(out)
    save_checkpoint(root / "first", chunks, cfg, iteration=0, step=0)
    helpers = psutil.Process().children(recursive=True)
    _publish(root / "helpers", " ".join(str(p.pid) for p in helpers))
    while not (root / "again").exists():
        time.sleep(0.02)
    save_checkpoint(root / "second", chunks, cfg, iteration=0, step=1)
    _publish(root / "saved_again", "ok")
    time.sleep(600)


def _publish(path: Path, text: str) -> None:
    path.with_suffix(".tmp").write_text(text)
    path.with_suffix(".tmp").rename(path)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, (path.parent / "stderr").read_text()[-3000:]
        assert time.monotonic() < deadline, f"the rank wrote no {path.name}"
        time.sleep(0.05)
    return path.read_text()


def _start_rank(tmp_path: Path) -> subprocess.Popen:
    code = (
        "import sys; from tests.checkpoint.test_writer_process import _rank; _rank(*sys.argv[1:])"
    )
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # a session of its own, so that the cleanup can reach whatever the rank left; stderr to a
    # file, not a pipe that the helpers inherit and keep open
    with open(tmp_path / "stderr", "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), str(free_port())],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": path}, stdout=subprocess.DEVNULL,
            stderr=stderr, start_new_session=True,
        )


def _helpers(tmp_path: Path, proc: subprocess.Popen) -> list[int]:
    helpers = [int(pid) for pid in _wait_for(tmp_path / "helpers", proc).split()]
    assert helpers, "the save started no helper process: nothing to check"
    return helpers


def test_the_writer_helper_dies_with_its_sigkilled_rank(tmp_path):
    proc, helpers = _start_rank(tmp_path), []
    try:
        helpers = _helpers(tmp_path, proc)
        os.kill(proc.pid, signal.SIGKILL)  # the rank alone, not its process group
        proc.wait(timeout=30)
        left = wait_gone(helpers, timeout=5)
        assert not left, f"helpers outlived their SIGKILLed rank: {_describe(left)}"
    finally:
        _kill_all(proc, helpers)


def test_the_writer_helper_survives_stop_signals_from_outside_its_rank(tmp_path):
    from megatron_scir.checkpoint import is_complete

    proc, helpers = _start_rank(tmp_path), []
    try:
        helpers = _helpers(tmp_path, proc)
        # Slurm's --signal / scancel --signal reach every process of the step, helpers too
        for pid in helpers:
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                os.kill(pid, sig)
        time.sleep(0.5)
        dead = [pid for pid in helpers if not alive(pid)]
        assert not dead, f"a stop signal from outside killed a helper: {dead}"
        (tmp_path / "again").touch()
        _wait_for(tmp_path / "saved_again", proc)
        assert is_complete(tmp_path / "second")
    finally:
        _kill_all(proc, helpers)


def _describe(pids: list[int]) -> list[str]:
    found = []
    for pid in pids:
        try:
            found.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:120]}")
        except psutil.Error:
            found.append(f"{pid}: gone")
    return found


def _kill_all(proc: subprocess.Popen, helpers: list[int]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the rank's group: its helpers, even orphaned
    except ProcessLookupError:
        pass
    for pid in helpers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
