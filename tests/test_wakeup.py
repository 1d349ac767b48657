"""The daemons' loops wake on work and deadlines, not on a tick (issue 27)."""

from __future__ import annotations

import threading
import time

import zmq

from latentfl.platform.wakeup import Wakeup, timeout_ms


def test_timeout_runs_to_the_earliest_future_deadline():
    """Past and missing deadlines are ignored; none ahead means wait for an event (-1)."""
    assert timeout_ms(100.0, [None, 99.0, 100.5, 102.0]) == 500
    assert timeout_ms(100.0, [100.0 + 1e-6]) == 1
    assert timeout_ms(100.0, [None, 50.0]) == -1


def test_a_set_from_another_thread_ends_the_poll_at_once():
    """A poll with no deadline returns as soon as another thread sets the wake-up."""
    wakeup = Wakeup()
    poller = zmq.Poller()
    poller.register(wakeup, zmq.POLLIN)
    timer = threading.Timer(0.2, wakeup.set)
    try:
        timer.start()
        started = time.monotonic()
        events = dict(poller.poll(20_000))
        assert wakeup.fileno() in events
        assert time.monotonic() - started < 10.0
        wakeup.clear()
        assert poller.poll(0) == []
    finally:
        timer.cancel()
        wakeup.close()
    wakeup.set()  # a late set after close is harmless
