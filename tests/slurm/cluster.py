"""A real two-node Slurm cluster on this one machine, for the launch tests.

Debian's slurm-wlm (22.05) runs several node daemons per host: ``slurmd -N node1`` and
``slurmd -N node2`` share 127.0.0.1 on their own ports, with their own spool directories. The
controller, both node daemons and (when not already running) munged are started here and
stopped by their PID files, whatever the test did. Recipe: ../shared/notes/PLATFORM.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "scancel", "srun")
NODES = ("node1", "node2")


def missing_programs() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not _sbin(name).exists()]


def _sbin(name: str) -> Path:
    return Path("/usr/sbin") / name


def _program(name: str) -> str:
    return shutil.which(name) or str(_sbin(name))


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


SLURM_CONF = """\
ClusterName=scirtest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
EnforcePartLimits=ALL
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
{nodes}
PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=EXCLUSIVE
"""
NODE_LINE = (
    "NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} CPUs=1 "
    "RealMemory=8000 State=UNKNOWN"
)


@dataclass
class LocalCluster:
    """The running cluster: ``env`` points the Slurm commands at it (``SLURM_CONF``)."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    _pid_files: list[Path] = field(default_factory=list)
    _munged: Path | None = None

    def run(
        self, *args: str, check: bool = True, timeout: float = 60, env=None, cwd=None,
        attempts: int = 1,
    ) -> str:
        """A Slurm command against this cluster (``env`` replaces :attr:`env` when given).

        ``attempts`` > 1 is for read-only queries only: a query that loses its connection to a
        busy controller (killed by SIGPIPE, or "Socket timed out") is asked again, up to that
        many times, one second apart. A command that changes state is never repeated.
        """
        failures = []
        for attempt in range(attempts):
            done = subprocess.run(
                [_program(args[0]), *args[1:]], env=self.env if env is None else env, cwd=cwd,
                capture_output=True, text=True, timeout=timeout,
            )
            if done.returncode == 0 or not check:
                return done.stdout
            failures.append(f"({done.returncode}) {done.stderr.strip()}")
            if not _transient(done) or attempt + 1 == attempts:
                break
            time.sleep(1.0)
        raise RuntimeError(f"{' '.join(args)} failed: " + "; ".join(failures))

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (JobState, Restarts, ExitCode, ...)."""
        line = self.run("scontrol", "show", "job", "-o", job_id, attempts=5)
        fields = {}
        for item in line.split():
            key, _, value = item.partition("=")
            fields[key] = value
        return fields

    def logs(self) -> str:
        """The daemons' logs, to attach to a failure."""
        parts = []
        for path in sorted(self.root.glob("*.log")):
            parts.append(f"===== {path.name}\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop every daemon started here, by its PID file (SIGTERM, then SIGKILL)."""
        files = list(self._pid_files) + ([self._munged] if self._munged else [])
        pids = []
        for path in files:
            try:
                pids.append(int(path.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                continue
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
        for pid in pids:
            _signal(pid, signal.SIGKILL)


TRANSIENT_ERRORS = ("Socket timed out", "Unable to contact slurm controller",
                    "Zero Bytes were transmitted", "Connection reset")


def _transient(done: subprocess.CompletedProcess) -> bool:
    """A failure that says the controller was busy, not that the query was wrong.

    The 2-core CI machine saw ``scontrol show job`` die of SIGPIPE (return code -13) while
    slurmctld was requeueing a job: the controller had closed the socket before the reply.
    """
    return done.returncode < 0 or any(text in done.stderr for text in TRANSIENT_ERRORS)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _munged_running() -> bool:
    return subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode == 0


def start_cluster(root: Path) -> LocalCluster:
    """Write the config under ``root``, start munged (if needed), slurmctld and two slurmd."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", *(f"spool/{node}" for node in NODES)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ctld_port, node_port, *ports = _free_ports(2 + len(NODES))
    nodes = "\n".join(NODE_LINE.format(name=n, port=p) for n, p in zip(NODES, ports, strict=True))
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(
        root=root, ctld_port=ctld_port, node_port=node_port, nodes=nodes
    ))
    cluster = LocalCluster(root, env={**os.environ, "SLURM_CONF": str(conf)})
    try:
        if not _munged_running():
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            subprocess.run(
                ["runuser", "-u", "munge", "--", _program("munged")], check=True, timeout=30
            )
            cluster._munged = Path("/run/munge/munged.pid")
        cluster._pid_files.append(root / "slurmctld.pid")
        subprocess.run([_program("slurmctld"), "-f", str(conf)], env=cluster.env, check=True,
                       timeout=30)
        for node in NODES:
            cluster._pid_files.append(root / f"slurmd-{node}.pid")
            subprocess.run([_program("slurmd"), "-N", node, "-f", str(conf)], env=cluster.env,
                           check=True, timeout=30)
        _wait_idle(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_idle(cluster: LocalCluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    states = ""
    while time.monotonic() < deadline:
        states = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        if states.count("idle") == len(NODES):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the Slurm nodes did not become idle in {timeout} s: {states}\n"
                       f"{cluster.logs()}")
