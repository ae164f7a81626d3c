"""How a process finds its rank: torchrun, srun, or a bare single process."""

from __future__ import annotations

import pytest

from megatron_scir.parallel.state import launcher_env


def test_torchrun_env_is_used_as_is():
    assert launcher_env({"RANK": "3", "WORLD_SIZE": "8", "SLURM_PROCID": "0"}) == {}


def test_srun_tasks_get_rank_world_and_local_rank_from_slurm():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "1",
        "MASTER_ADDR": "node001",
    }
    assert launcher_env(env) == {
        "RANK": "5",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "1",
        "MASTER_PORT": "29500",
    }


def test_srun_without_master_addr_says_what_to_export():
    with pytest.raises(RuntimeError, match="export MASTER_ADDR=.*scontrol show hostnames"):
        launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def test_a_bare_process_or_a_one_task_allocation_is_a_world_of_one():
    for env in ({}, {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}):
        got = launcher_env(env)
        assert (got["RANK"], got["WORLD_SIZE"], got["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
        assert int(got["MASTER_PORT"]) > 0
