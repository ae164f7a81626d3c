"""Shared fixtures of the iteration tests."""

from __future__ import annotations

import pytest

from megatron_scir.tasks.arithmetic import write_task_files


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The arithmetic task's files, small: 64 SFT and judge records, 96 prompts, 100 facts."""
    return write_task_files(
        tmp_path_factory.mktemp("task"), num_sft=64, num_judge=64, num_prompts=96, max_operand=9
    )
