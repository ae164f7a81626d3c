"""Suite-wide hooks: the session fails if a test leaves a process behind
(:mod:`megatron_scir.testing.no_orphans`)."""

from megatron_scir.testing.no_orphans import pytest_configure, pytest_sessionfinish  # noqa: F401
