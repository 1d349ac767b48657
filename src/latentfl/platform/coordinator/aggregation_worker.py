"""The aggregation worker: ``Rounds.aggregate`` in a thread, off the daemon's loop.

Aggregating a round (FedDGM distils on the GPU, then trains two models) takes seconds to
minutes; meanwhile the loop must keep answering heartbeats, late updates and audit fetches.
``Rounds.aggregate`` touches only the strategy and checkpoint files, so it runs here; when the
thread is done it calls ``on_done`` (the daemon's wake-up), and the loop's
:meth:`AggregationWorker.poll` then moves the rounds on (``Rounds.finish_close``) in the loop's
own thread and returns the closed round's record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from latentfl.platform.coordinator.rounds import RoundRecord, Rounds
from latentfl.strategies import Update


@dataclass
class _Job:
    thread: threading.Thread
    started: float
    outcome: list[RoundRecord | BaseException]


class AggregationWorker:
    """At most one aggregation at a time, for one session's :class:`Rounds`."""

    def __init__(self, rounds: Rounds, on_done: Callable[[], None] | None = None) -> None:
        self.rounds = rounds
        self.on_done = on_done
        self._job: _Job | None = None
        self.seconds = 0.0  # how long the last finished aggregation took

    @property
    def busy(self) -> bool:
        """An aggregation was started and its result not yet collected by :meth:`poll`."""
        return self._job is not None

    def start(self, aggregate: Update | None = None) -> None:
        """Aggregate the round being closed (with ``aggregate``: the unmasked secagg or ckks
        mean)."""
        if self._job is not None:
            raise RuntimeError("an aggregation is already running")
        outcome: list[RoundRecord | BaseException] = []
        thread = threading.Thread(target=self._work, args=(outcome, aggregate),
                                  name="aggregate", daemon=True)
        self._job = _Job(thread, time.perf_counter(), outcome)
        thread.start()

    def _work(self, outcome: list[RoundRecord | BaseException], aggregate: Update | None) -> None:
        try:
            outcome.append(self.rounds.aggregate(aggregate))
        except BaseException as exc:  # re-raised in the loop's thread by poll()
            outcome.append(exc)
        finally:
            if self.on_done is not None:
                self.on_done()

    def poll(self, wait: float = 0.0) -> RoundRecord | None:
        """The closed round's record once the thread is done (waiting up to ``wait`` s), after
        moving the rounds on; None while it runs. Re-raises what the aggregation raised."""
        job = self._job
        if job is None:
            return None
        job.thread.join(wait)
        if job.thread.is_alive():
            return None
        self._job = None
        self.seconds = time.perf_counter() - job.started
        outcome = job.outcome[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return self.rounds.finish_close(outcome)


__all__ = ["AggregationWorker"]
