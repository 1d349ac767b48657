"""Moving a session's rounds along in time: open, close (in the clear, or through secagg's
exchange with the masked words in the clear or under CKKS), aggregate.

Socket-free, like the parts it drives: the daemon calls :meth:`RoundConductor.step` with the
online participants and the time, and sends the outbox it returns (the TASKs of a round just
opened, the secagg exchanges, a ckks DECRYPT_TASK); :meth:`~RoundConductor.finish` collects a round
the aggregation worker has closed. With a ``[distributed]`` section the strategy distils on a
torchrun worker group (:mod:`~latentfl.platform.coordinator.distributed`), whose journal lines
the aggregation thread queues with :meth:`~RoundConductor.note`. The TASKs of a plan are
encoded once, by participant, and forgotten when the
plan changes (a new round, a round planned again, a round closed).

While paused (an operator's ``latentfl admin pause``) it opens no round and closes none: TASKs
already sent stay valid and their UPDATEs are still accepted and kept, an aggregation (or an
unmasking) already begun finishes, and the open round's deadline stands still until
:meth:`~RoundConductor.resume`.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Collection

from latentfl.errors import ProtocolError, Reason
from latentfl.log import get_logger
from latentfl.models import ModelManifest
from latentfl.platform.coordinator.aggregation_worker import AggregationWorker
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.distributed import WorkerGroup
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.coordinator.rounds import RoundRecord, Rounds
from latentfl.platform.coordinator.secagg_exchange import MaskedAggregation
from latentfl.platform.protocol import Kind, Message, Outgoing
from latentfl.platform.wire.payloads import encode_task
from latentfl.strategies import Update, UsesDistiller


class RoundConductor:
    """Drives one session's :class:`Rounds` (see the module docstring)."""

    def __init__(self, config: CoordinatorConfig, rounds: Rounds, journal: Journal,
                 manifest: ModelManifest, masked: MaskedAggregation | None = None,
                 on_aggregated: Callable[[], None] | None = None,
                 task_meta: Callable[[str], Collection[str]] = lambda _: ()) -> None:
        """``masked``: the secagg exchange of a ``secagg`` or ``ckks`` session (None: plain);
        ``on_aggregated``: called from the worker thread when an aggregation is done;
        ``task_meta(pid)``: the gated TASK meta keys ``pid``'s agent decodes (its HELLO)."""
        self.model = config.strategy.model
        self.rounds = rounds
        self.journal = journal
        self.manifest = manifest
        self.masked = masked
        self.task_meta = task_meta
        self.worker = AggregationWorker(rounds, on_aggregated)
        self.log = get_logger("coordinator", session=config.session)
        self._encoded: dict[str, tuple[bytes, dict]] = {}  # this plan's TASKs, by participant
        self._notes: queue.SimpleQueue[tuple[str, dict]] = queue.SimpleQueue()
        self.paused_since: float | None = None
        # sites that declined the current round for good (a masked update already sent):
        # planning it again with them would loop, each plan declined at once
        self.spent: dict[int, set[str]] = {}  # round -> sites
        self.group: WorkerGroup | None = None
        if config.distributed is not None:  # each round's distillation on a torchrun group
            self.group = WorkerGroup(config.distributed, rounds.store.root / "distill", self.note)
            if isinstance(rounds.strategy, UsesDistiller):
                rounds.strategy.use_distiller(self.group)

    def note(self, event: str, **fields) -> None:
        """Queue a journal line from the aggregation thread (thread-safe); the loop's thread
        writes it at its next :meth:`finish`, with the round being aggregated now."""
        self._notes.put((event, {"round": self.rounds.round, **fields}))

    @property
    def paused(self) -> bool:
        return self.paused_since is not None

    def pause(self, now: float) -> None:
        """Open and close no round until :meth:`resume` (see the module docstring)."""
        if self.paused_since is None:
            self.paused_since = now

    def resume(self, now: float) -> None:
        """Carry on; the open round's deadline moves by the time spent paused."""
        if self.paused_since is not None:
            self.rounds.hold(now - self.paused_since)
            self.paused_since = None

    def abort(self) -> RoundRecord:
        """Skip the collecting round (``Rounds.abort``): its TASKs are void, the next opens.
        An operator aborts only a collecting round (no encrypted sum is out yet)."""
        if self.rounds.phase != "collecting":
            raise ValueError(f"round {self.rounds.round} is {self.rounds.phase}; only a "
                             "collecting round can be aborted")
        record = self.rounds.abort()
        self._encoded.clear()
        self.log.warning("round_aborted", round=record.round, accepted=len(record.accepted))
        return record

    def declined_for_good(self, pid: str, round: int) -> None:
        """``pid`` can never take part in ``round`` again (it already sent its masked update)."""
        if round == self.rounds.round:
            self.spent = {round: self.spent.get(round, set()) | {pid}}

    def _skip_spent_round(self) -> None:
        """Skip a round too few sites can still join (the rest already uploaded a masked
        update for it): checkpoint it unchanged as aborted; the next round opens for all."""
        rounds = self.rounds
        spent = sorted(self.spent.pop(rounds.round))
        record = rounds.abort()
        self._encoded.clear()
        reason = (f"round {record.round} cannot be planned again: {', '.join(spent)} already "
                  "uploaded a masked update for it and too few other sites are online")
        self.journal.append("round_aborted", round=record.round, participants=spent,
                            accepted={}, reason=reason)
        self.log.warning("round_aborted", round=record.round, reason=reason,
                         summary=f"round {record.round} aborted; {reason}")

    def step(self, online: list[str], now: float) -> list[Outgoing]:
        """Open, close or re-plan the round as the time and the online participants say."""
        rounds, outbox = self.rounds, []
        spent = self.spent.get(rounds.round)
        if spent and rounds.phase == "waiting" and not self.paused:
            online = [p for p in online if p not in spent]
            if len(online) < rounds.config.min_participants:
                self._skip_spent_round()
        tasks = {} if self.paused else rounds.maybe_start(online, now)
        if tasks:
            self._encoded.clear()
            self.journal.append("round_opened", round=rounds.round, participants=sorted(tasks))
            self.log.info("round_opened", round=rounds.round, participants=sorted(tasks),
                          summary=f"round {rounds.round} opened: tasks to {len(tasks)} "
                                  f"participants ({', '.join(sorted(tasks))})")
            if self.masked is not None:
                self.masked.open(rounds.round, sorted(tasks), now)
            outbox += [out for pid in tasks for out in self.task_for(pid)]
        if self.worker.busy:
            return outbox
        if self.masked is not None:
            outbox += self._step_masked(now, online)
            if self.masked.unmasking or rounds.phase != "collecting":
                return outbox
        if self.paused:
            return outbox
        verdict = rounds.due(online, now)
        if verdict == "replan":
            self._replan()
        elif verdict == "close":
            rounds.begin_close()
            if self.masked is not None:
                return outbox + self.masked.close(rounds.updates, now)
            self._aggregate()
        return outbox

    def next_deadline(self) -> float | None:
        """The next time :meth:`step` may act without a message (None: only on events)."""
        if self.paused or self.worker.busy:  # a resume is a message; the worker wakes us
            return None
        times = [self.rounds.next_deadline()]
        if self.masked is not None:
            times.append(self.masked.next_deadline())
        return min((t for t in times if t is not None), default=None)

    def receive_secagg(self, message: Message) -> list[Outgoing]:
        """A participant's SECAGG_KEYS, SECAGG_SHARES, SECAGG_SIGNATURE or SECAGG_REVEAL."""
        if self.masked is None:
            raise ProtocolError(Reason.WRONG_MODE, f"a {message.header.kind.value} was sent but "
                                                   "this session uses neither secagg nor ckks.")
        return self.masked.receive(message, time.time())

    def _step_masked(self, now: float, online: list[str]) -> list[Outgoing]:
        """Move the secagg exchange on; abandon the round it failed; aggregate its result."""
        masked, rounds = self.masked, self.rounds
        assert masked is not None
        if rounds.phase == "collecting" and not masked.holds(rounds.round):
            masked.failure = "the coordinator restarted; its secagg state was in memory only."
            self.journal.append("secagg_abandoned", round=rounds.round, reason=masked.failure)
        outbox = masked.step(now, online=online)
        if masked.failure is not None:
            masked.reset()
            self._replan()
        elif masked.result is not None:
            aggregate, masked.result = masked.result, None
            masked.reset()
            self._aggregate(aggregate)
        return outbox

    def _replan(self) -> None:
        rounds = self.rounds
        self.journal.append("round_abandoned", round=rounds.round,
                            accepted=sorted(rounds.updates))
        self.log.warning("round_abandoned", round=rounds.round, accepted=len(rounds.updates))
        rounds.replan()
        self._encoded.clear()

    def task_for(self, pid: str) -> list[Outgoing]:
        """``pid``'s TASK of the round in progress, if it has one."""
        task = self.rounds.tasks.get(pid)
        if task is None:
            return []
        if pid not in self._encoded:
            payload, meta = encode_task(task, self.model, self.manifest.digest,
                                        self.task_meta(pid))
            if self.masked is not None:
                meta |= self.masked.task_meta()
            self._encoded[pid] = payload, meta
        payload, meta = self._encoded[pid]
        self.log.info("task_sent", round=task.round, peer=pid, bytes=len(payload))
        return [Outgoing(pid, Kind.TASK, task.round, payload, meta)]

    def receive_aggregate(self, message: Message) -> list[Outgoing]:
        """The designated participant's AGGREGATE (ckks: the decrypted limb sums): its ACK."""
        if self.masked is None:
            raise ProtocolError(Reason.WRONG_MODE, "an AGGREGATE was sent but this session does "
                                                   "not use ckks.")
        return self.masked.receive_aggregate(message, time.time())

    def _aggregate(self, aggregate: Update | None = None) -> None:
        """Aggregate in the worker thread, so heartbeats and late messages are still answered."""
        accepted, planned = len(self.rounds.updates), len(self.rounds.plan)
        self.log.info("round_aggregating", round=self.rounds.round, accepted=accepted,
                      planned=planned, summary=f"round {self.rounds.round}: aggregating "
                                               f"{accepted} of {planned} updates")
        self.worker.start(aggregate)

    def finish(self, wait: float = 0.0) -> RoundRecord | None:
        """The round the worker finished aggregating (journaled), if it has; waits up to
        ``wait`` seconds. Journals the aggregation's queued notes first."""
        record = self.worker.poll(wait)
        self._journal_notes()
        if record is None:
            return None
        self._encoded.clear()
        entries = []
        for entry in record.set_aside:  # before round_closed: the round's decisions, then it
            fields = {k: v for k, v in entry.items() if k != "participant"}
            entries.append(("set_aside", {"round": record.round, "peer": entry["participant"],
                                          **fields}))
            self.log.warning("update_set_aside", round=record.round, peer=entry["participant"],
                             **fields)
        entries.append(("round_closed", {"round": record.round, "accepted": record.accepted,
                                         "metrics": record.metrics}))
        # Not fsynced here: the checkpoint already holds the round, and the next round's
        # round_opened, fsynced before its TASKs, takes these lines to disk with it (the
        # daemon syncs the journal after a step that opened none).
        self.journal.append_group(entries, durable=False)
        accuracy = record.metrics.get("accuracy")
        self.log.info("round_closed", round=record.round, accepted=len(record.accepted),
                      planned=len(record.participants), seconds=round(record.seconds, 3),
                      aggregate_s=round(self.worker.seconds, 3), **record.metrics,
                      summary=f"round {record.round} closed in {record.seconds:.1f} s with "
                              f"{len(record.accepted)} of {len(record.participants)} updates"
                              + ("" if accuracy is None else
                                 f"; test accuracy {100 * accuracy:.1f}%"))
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
