"""Waking a daemon's ZeroMQ loop when there is work, never on a fixed tick.

A loop polls its sockets and a :class:`Wakeup` (a self-pipe another thread sets when its work
is done: an aggregation, a local training) with a timeout up to its earliest deadline
(:func:`timeout_ms`): a round's or a phase's deadline, a heartbeat due or overdue, the next
roster check. So it answers a message, a finished job or a deadline at once, and otherwise
sleeps.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterable


class Wakeup:
    """A self-pipe for ``zmq.Poller.register``: :meth:`set` from any thread makes the poll
    return; the loop :meth:`clear` s it before looking for work."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._lock = threading.Lock()  # a late set() never writes to a closed (reused) fd
        self._closed = False

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        with self._lock, contextlib.suppress(BlockingIOError):  # full: woken already
            if not self._closed:
                os.write(self._write, b"\x01")

    def clear(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._read)
                os.close(self._write)


def timeout_ms(now: float, deadlines: Iterable[float | None]) -> int:
    """Milliseconds from ``now`` to the earliest deadline after it (None ones are ignored, and
    so are those not after ``now``: the step just run has handled them); -1 (wait for an
    event) when there is none."""
    ahead = [d for d in deadlines if d is not None and d > now]
    if not ahead:
        return -1
    return max(1, math.ceil((min(ahead) - now) * 1000))


__all__ = ["Wakeup", "timeout_ms"]
