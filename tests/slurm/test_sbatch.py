"""``sbatch slurm/scir_70b.sh`` on a real two-node Slurm cluster (slurmctld + two slurmd).

The 70B batch script runs unchanged; what the cluster lacks is overridden the way a user would:
sbatch's ``--nodes=2 --ntasks-per-node=1 --gpus-per-node=0`` and, after the script name,
``--config tiny`` with CPU/gloo overrides. The two tasks are TP=2 across the two "nodes" and
meet at the rendezvous the launcher resolves from the allocation.

1. One full self-rewarding iteration (generate → pairs → reference → train → evaluate)
   completes.
2. The same job gets ``scancel --signal=USR1`` during training (as Slurm's ``--signal`` sends it
   before the time limit, to every process of the step): every rank saves and exits 75, the
   batch script requeues the job, and the requeued job finishes the iteration from the
   checkpoint: its training losses equal the uninterrupted run's, step for step.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from megatron_scir.tasks.arithmetic import write_task_files
from tests.iteration.test_iterate import BASE

from .cluster import LocalCluster, missing_programs, start_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.dist]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "slurm" / "scir_70b.sh"
STAGES = ("generate", "pairs", "reference", "train", "evaluate")
SIGNAL_AFTER_STEP = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.environ.get("SCIR_NO_SLURM") == "1":
        pytest.skip("SCIR_NO_SLURM=1: the Slurm tests were switched off")
    missing = missing_programs()
    if missing or os.geteuid() != 0:
        pytest.fail(
            f"the Slurm tests need slurmctld, slurmd, slurm-client and munge (missing: "
            f"{missing or 'none'}) and root (euid {os.geteuid()}): scripts/test.sh installs "
            "them; SCIR_NO_SLURM=1 switches these tests off"
        )
    running = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_task_files(
        tmp_path_factory.mktemp("task"), num_sft=64, num_judge=64, num_prompts=96, max_operand=9
    )


def _arguments(task) -> list[str]:
    """What follows the script name: the tiny preset on CPU, TP=2 over the two nodes."""
    return [
        "--config", "tiny",
        "parallel.distributed_backend=gloo",
        "parallel.tensor_model_parallel_size=2",
        *BASE,  # the arithmetic task's budgets, as tests/iteration runs it
        f"data.tokenizer_path={task.tokenizer}",
        f"data.prompts={task.prompts}",
        "train.epochs=4",
        "iteration.seed_sft=false",
        "iteration.num_iterations=1",
        "iteration.prompts_per_iteration=48",
        f"iteration.eval_pairs={task.eval_pairs}",
        f"iteration.eval_prompts={task.eval_prompts}",
        "iteration.grader=megatron_scir.tasks.arithmetic:grade",
        "checkpoint.save_interval=5",
    ]


class Job:
    """One submitted job: its id, submit directory and run directory."""

    def __init__(self, cluster: LocalCluster, workdir: Path, task) -> None:
        self.cluster, self.workdir = cluster, workdir
        self.run_dir = workdir / "run"
        workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in cluster.env.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        env.update(SCIR_HOME=str(REPO), SCIR_RUN_DIR=str(self.run_dir),
                   SCIR_PYTHON_BIN=sys.executable)
        sbatch = [
            "sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0",
            "--time=15", str(SCRIPT), *_arguments(task),
        ]
        # sbatch's --output (slurm-%x-%j.out) is relative to the submit dir
        self.id = cluster.run(*sbatch, env=env, cwd=workdir).strip().split(";")[0]

    def state(self) -> dict[str, str]:
        return self.cluster.job(self.id)

    def wait(self, timeout: float = 420) -> dict[str, str]:
        """Poll until the job has ended (COMPLETED, FAILED, ...); its last state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state.get("JobState") not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING",
                                              "REQUEUED", "REQUEUE_HOLD", "SUSPENDED"):
                return state
            time.sleep(1)
        self.fail(f"job {self.id} did not end in {timeout} s")

    def training_steps(self) -> list[dict]:
        path = self.run_dir / "iter_1" / "train" / "logs" / "metrics.jsonl"
        if not path.exists():
            return []
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines[:-1] if line]  # the last may be torn

    def fail(self, message: str):
        """pytest.fail with the batch log, every attempt's srun log and the daemons' logs."""
        parts = [message, f"state: {self.state()}"]
        for path in [*sorted(self.workdir.glob("slurm-*.out")),
                     *sorted((self.run_dir / "logs").glob("attempt-*.log"))]:
            parts.append(f"===== {path}\n{path.read_text(errors='replace')[-8000:]}")
        parts.append(self.cluster.logs())
        pytest.fail("\n".join(parts), pytrace=False)

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.fail(message)


def _losses(run_dir: Path) -> list[float]:
    path = run_dir / "iter_1" / "train" / "logs" / "metrics.jsonl"
    return [json.loads(line)["loss/total"] for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def uninterrupted(cluster, task, tmp_path_factory):
    job = Job(cluster, tmp_path_factory.mktemp("uninterrupted"), task)
    return job, job.wait()


def test_sbatch_runs_one_iteration_on_two_nodes(uninterrupted):
    job, state = uninterrupted
    job.check(state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0",
              f"job {job.id} ended {state['JobState']} {state['ExitCode']}")
    log = (job.run_dir / "logs" / "attempt-0.log").read_text()
    job.check("0: " in log and "1: " in log, "not both tasks wrote to the srun log")
    for stage in STAGES:
        job.check((job.run_dir / "iter_1" / stage / "stage.json").is_file(),
                  f"iter_1/{stage} has no marker")
    lines = (job.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    job.check([r["iteration"] for r in records] == [0, 1], f"metrics.jsonl: {records}")
    job.check(0.0 <= records[1]["oracle_accuracy"] <= 1.0, f"no held-out evaluation: {records}")
    checkpoint = max((job.run_dir / "iter_1" / "train" / "checkpoints").glob("step_*"))
    layout = json.loads((checkpoint / "scir_checkpoint.json").read_text())["layout"]
    job.check(layout["tensor_model_parallel_size"] == 2, f"trained at {layout}, not TP=2")
    job.check(not (job.run_dir / "preempted.json").exists(), "preempted.json after a clean run")


def test_usr1_saves_requeues_and_finishes_the_iteration(cluster, task, uninterrupted,
                                                         tmp_path_factory):
    reference, _ = uninterrupted
    job = Job(cluster, tmp_path_factory.mktemp("usr1"), task)
    deadline = time.monotonic() + 300
    asked = 0.0
    while len(job.training_steps()) < SIGNAL_AFTER_STEP:
        job.check(time.monotonic() < deadline, f"job {job.id}: training never reached step "
                  f"{SIGNAL_AFTER_STEP}")
        if time.monotonic() - asked >= 1.0:  # the metrics file 5×/s, the controller 1×/s
            asked = time.monotonic()
            job.check(job.state()["JobState"] in ("PENDING", "RUNNING"),
                      f"job {job.id} ended before the signal")
        time.sleep(0.2)
    cluster.run("scancel", "--signal=USR1", job.id)
    state = job.wait()
    job.check(state["JobState"] == "COMPLETED" and state["ExitCode"] == "0:0",
              f"job {job.id} ended {state['JobState']} {state['ExitCode']}")
    job.check(state["Restarts"] == "1", f"job {job.id} was restarted {state['Restarts']} times")
    first = (job.run_dir / "logs" / "attempt-0.log").read_text()
    second = (job.run_dir / "logs" / "attempt-1.log").read_text()
    job.check(first.count("stop signal SIGUSR1: saved step") == 2,
              "attempt 0: not every rank saved on SIGUSR1")
    saved = int(first.split("stop signal SIGUSR1: saved step ")[1].split()[0])
    total = len(_losses(reference.run_dir))
    job.check(SIGNAL_AFTER_STEP <= saved < total, f"saved at step {saved} of {total}")
    job.check(f"(step {saved})" in second and "resumed from" in second,
              f"attempt 1 did not resume from step {saved}")
    job.check("iteration 1: generate" not in second, "attempt 1 generated again")
    batch_log = next(job.workdir.glob("slurm-*.out")).read_text()
    job.check("requeueing job" in batch_log, "the batch script did not requeue")
    for stage in STAGES:
        job.check((job.run_dir / "iter_1" / stage / "stage.json").is_file(),
                  f"iter_1/{stage} has no marker")
    job.check(_losses(job.run_dir) == _losses(reference.run_dir),
              f"training losses differ from the uninterrupted run:\n{_losses(job.run_dir)}\n"
              f"{_losses(reference.run_dir)}")
    job.check(not (job.run_dir / "preempted.json").exists(), "preempted.json left behind")
