"""Suite-wide hooks: the session fails if a test leaves a process behind
(:mod:`megatron_scir.testing.no_orphans`). Tests that save a checkpoint in this process start
the checkpoint writer's helper, which lives as long as this process: it is stopped after the
last teardown, before the check."""

import pytest

from megatron_scir.testing.no_orphans import check_session, pytest_configure  # noqa: F401


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int):
    result = yield
    from megatron_scir.checkpoint.io import stop_writer_queue

    stop_writer_queue()
    check_session(session)
    return result
