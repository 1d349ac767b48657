"""The aggregation worker: ``Rounds.aggregate`` in a thread, off the daemon's loop.

Aggregating a round (FedDGM distils on the GPU, then trains two models) takes seconds to
minutes; meanwhile the loop must keep answering heartbeats, late updates and audit fetches.
``Rounds.aggregate`` touches only the strategy and checkpoint files, so it runs here; when the
thread is done it calls ``on_done`` (the daemon's wake-up), and the loop's
:meth:`AggregationWorker.poll` then moves the rounds on (``Rounds.finish_close``) in the loop's
own thread and returns the closed round's record.

The job counts as done when its outcome is set, not when its thread has ended: ``on_done``
runs in that thread, so the loop it wakes may look before the thread is gone, and a finished
job must not then wait for the loop's next deadline.
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
    started: float
    outcome: list[RoundRecord | BaseException]
    done: threading.Event


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
        job = self._job = _Job(time.perf_counter(), [], threading.Event())
        threading.Thread(target=self._work, args=(job, aggregate), name="aggregate",
                         daemon=True).start()

    def _work(self, job: _Job, aggregate: Update | None) -> None:
        try:
            job.outcome.append(self.rounds.aggregate(aggregate))
        except BaseException as exc:  # re-raised in the loop's thread by poll()
            job.outcome.append(exc)
        finally:
            job.done.set()
            if self.on_done is not None:
                self.on_done()

    def poll(self, wait: float = 0.0) -> RoundRecord | None:
        """The closed round's record once the thread is done (waiting up to ``wait`` s), after
        moving the rounds on; None while it runs. Re-raises what the aggregation raised."""
        job = self._job
        if job is None:
            return None
        if not job.done.wait(wait):
            return None
        self._job = None
        self.seconds = time.perf_counter() - job.started
        outcome = job.outcome[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return self.rounds.finish_close(outcome)


__all__ = ["AggregationWorker"]
