"""Moving a session's rounds along in time: open, close (in the clear or via CKKS), aggregate.

Socket-free, like the parts it drives: the daemon calls :meth:`RoundConductor.step` with the
online participants and the time, and sends the outbox it returns (the TASKs of a round just
opened, a DECRYPT_TASK); :meth:`~RoundConductor.finish` collects a round the aggregation
worker has closed. With a ``[distributed]`` section the strategy distils on a torchrun worker
group (:mod:`~latentfl.platform.coordinator.distributed`), whose journal lines the aggregation
thread queues with :meth:`~RoundConductor.note`. The TASKs of a plan are encoded once, by participant, and forgotten when the
plan changes (a new round, a round planned again, a round closed).
"""

from __future__ import annotations

import queue

from latentfl.errors import ProtocolError, Reason
from latentfl.log import get_logger
from latentfl.models import ModelManifest
from latentfl.platform.coordinator.aggregation import AggregationWorker
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.distributed import WorkerGroup
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.coordinator.rounds import RoundRecord, Rounds
from latentfl.platform.coordinator.secure import SecureAggregation
from latentfl.platform.payloads import encode_task
from latentfl.platform.protocol import Kind, Message, Outgoing
from latentfl.strategies import Update


class RoundConductor:
    """Drives one session's :class:`Rounds` (see the module docstring)."""

    def __init__(self, config: CoordinatorConfig, rounds: Rounds, journal: Journal,
                 manifest: ModelManifest, secure: SecureAggregation | None) -> None:
        self.model = config.strategy.model
        self.rounds = rounds
        self.journal = journal
        self.manifest = manifest
        self.secure = secure
        self.worker = AggregationWorker(rounds)
        self.log = get_logger("coordinator", session=config.session)
        self._encoded: dict[str, tuple[bytes, dict]] = {}  # this plan's TASKs, by participant
        self._notes: queue.SimpleQueue[tuple[str, dict]] = queue.SimpleQueue()
        self.group: WorkerGroup | None = None
        if config.distributed is not None:  # each round's distillation on a torchrun group
            self.group = WorkerGroup(config.distributed, rounds.store.root / "distill", self.note)
            rounds.strategy.use_distiller(self.group)

    def note(self, event: str, **fields) -> None:
        """Queue a journal line from the aggregation thread (thread-safe); the loop's thread
        writes it at its next :meth:`finish`, with the round being aggregated now."""
        self._notes.put((event, {"round": self.rounds.round, **fields}))

    def step(self, online: list[str], now: float) -> list[Outgoing]:
        """Open, close or re-plan the round as the time and the online participants say."""
        rounds, outbox = self.rounds, []
        tasks = rounds.maybe_start(online, now)
        if tasks:
            self._encoded.clear()
            self.journal.append("round_opened", round=rounds.round, participants=sorted(tasks))
            self.log.info("round_opened", round=rounds.round, participants=sorted(tasks))
            outbox += [out for pid in tasks for out in self.task_for(pid)]
        if self.worker.busy:
            return outbox
        if self.secure is not None and self.secure.waiting:
            return outbox + self.secure.step(online, now)
        verdict = rounds.due(online, now)
        if verdict == "replan":
            self.journal.append("round_abandoned", round=rounds.round,
                                accepted=sorted(rounds.updates))
            self.log.warning("round_abandoned", round=rounds.round, accepted=len(rounds.updates))
            rounds.replan()
            self._encoded.clear()
            if self.secure is not None:
                self.secure.reset()
        elif verdict == "close":
            rounds.begin_close()
            if self.secure is not None:
                return outbox + self.secure.close(rounds.round, rounds.updates, online, now)
            self._aggregate()
        return outbox

    def task_for(self, pid: str) -> list[Outgoing]:
        """``pid``'s TASK of the round in progress, if it has one."""
        task = self.rounds.tasks.get(pid)
        if task is None:
            return []
        if pid not in self._encoded:
            self._encoded[pid] = encode_task(task, self.model, self.manifest.digest)
        payload, meta = self._encoded[pid]
        self.log.info("task_sent", round=task.round, peer=pid, bytes=len(payload))
        return [Outgoing(pid, Kind.TASK, task.round, payload, meta)]

    def receive_aggregate(self, message: Message) -> list[Outgoing]:
        """The designated participant's decrypted AGGREGATE: its ACK; the strategy gets it."""
        if self.secure is None:
            raise ProtocolError(Reason.WRONG_MODE, "an AGGREGATE was sent but this session does "
                                                   "not use encrypted aggregation.")
        ack, aggregate = self.secure.receive_aggregate(message)
        if aggregate is not None:
            self._aggregate(aggregate)
        return ack

    def _aggregate(self, aggregate: Update | None = None) -> None:
        """Aggregate in the worker thread, so heartbeats and late messages are still answered."""
        self.log.info("round_aggregating", round=self.rounds.round,
                      accepted=len(self.rounds.updates), planned=len(self.rounds.plan))
        self.worker.start(aggregate)

    def finish(self, wait: float = 0.0) -> RoundRecord | None:
        """The round the worker finished aggregating (journaled), if it has; waits up to
        ``wait`` seconds. Journals the aggregation's queued notes first."""
        record = self.worker.poll(wait)
        self._journal_notes()
        if record is None:
            return None
        self._encoded.clear()
        self.journal.append("round_closed", round=record.round, accepted=record.accepted,
                            metrics=record.metrics)
        self.log.info("round_closed", round=record.round, accepted=len(record.accepted),
                      planned=len(record.participants), seconds=round(record.seconds, 3),
                      aggregate_s=round(self.worker.seconds, 3), **record.metrics)
        return record

    def stop(self) -> None:
        """Stop a running distillation worker group (the daemon is exiting)."""
        if self.group is not None:
            self.group.stop()

    def _journal_notes(self) -> None:
        while not self._notes.empty():
            event, fields = self._notes.get()
            self.journal.append(event, **fields)
            self.log.info(event, **fields)


__all__ = ["RoundConductor"]
