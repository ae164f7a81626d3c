"""StopRequest: SIGTERM/SIGUSR1 are recorded, not fatal, and nested requests share them."""

from __future__ import annotations

import os
import signal

from megatron_scir.training.signals import StopRequest


def test_nested_requests_share_a_signal_received_by_either():
    with StopRequest() as outer:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert outer.signal_name == "SIGUSR1"
        with StopRequest() as inner:  # the trainer's, opened after the signal came
            assert inner.signal_name == "SIGUSR1"
    with StopRequest() as outer:
        with StopRequest() as inner:
            os.kill(os.getpid(), signal.SIGTERM)
            assert inner.signal_name == "SIGTERM"
        assert outer.signal_name == "SIGTERM"  # passed on: the driver stops at the next stage
        assert outer.agreed()  # a world of one: no collective
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_handlers_are_restored_and_a_fresh_request_starts_clear():
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequest() as stop:
        assert stop.signal_name is None and not stop.agreed()
    assert signal.getsignal(signal.SIGUSR1) == before
