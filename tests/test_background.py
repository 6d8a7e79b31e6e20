"""swarm.background.BackgroundLoop: runs on its interval, at once when woken, survives a failing pass, and stops."""

from __future__ import annotations

import threading
import time

import pytest

from swarm.background import BackgroundLoop


def test_loop_runs_each_interval_survives_errors_wakes_and_stops():
    calls: list[float] = []
    second_call = threading.Event()

    def body():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("a failed pass")
        second_call.set()

    started = time.monotonic()
    loop = BackgroundLoop("test-loop", 0.1, body).start()
    assert second_call.wait(5)  # the failing first pass did not end the loop
    assert calls[0] - started >= 0.09  # the first pass comes one interval after start

    slow = BackgroundLoop("test-slow", 60.0, body)
    slow.stop()  # stopping a loop that never started is fine
    woken = BackgroundLoop("test-woken", 60.0, lambda: calls.append(-1.0)).start()
    woken.wake()
    deadline = time.monotonic() + 5
    while -1.0 not in calls:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    woken.stop(timeout=5)

    loop.stop(timeout=5)
    assert loop.stopping
    count = len(calls)
    time.sleep(0.3)
    assert len(calls) == count  # no pass after stop


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        BackgroundLoop("bad", 0, lambda: None)
