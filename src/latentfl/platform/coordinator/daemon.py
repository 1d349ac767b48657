"""The coordinator daemon: a ZeroMQ ROUTER (CURVE server, roster-fed ZAP) around the rounds.

It only dispatches. One thread owns the socket and the loop, which reads as: receive, verify,
dispatch, send. Each message is verified by the protocol's Verifier (frames, ZAP User-Id =
sender, signature, session, nonce, timestamp, payload hash, a kind participants may send), then
handed to the handler its kind names in a table; handlers and the time-driven step return an
outbox of :class:`~latentfl.platform.protocol.Outgoing` messages that the loop signs and sends.
The decisions live in socket-free parts: the rounds (``rounds.Rounds``), secagg and ckks
masked aggregation (``secagg_exchange.MaskedAggregation``, with ``ckks_sum.EncryptedSum`` as
ckks's ciphertext layer), the audit answers (``audits.service``), and the aggregation worker
thread (``aggregation_worker.AggregationWorker``). ``_receive`` is the fault barrier: any
exception while handling one message (a ProtocolError, or a bug our code hit on a peer's
input) becomes a REJECT to that peer naming the reason (``internal`` when nothing better fits),
a journal entry and one log line; the loop keeps serving. Refusals, and the ZAP handler's
refused handshakes (journal event ``zap_refused``), are journaled at a bounded rate
(``refusals``).

At start the temp files a crash left are removed and the journal is checked against the latest
checkpoint's record of it; a lost journal stops the start unless ``accept_journal_loss``.

Operators (the roster's ``[[operators]]``) use the same socket: their admin commands, the only
kinds their role may send, go to ``admin.AdminService`` and are answered on the connection they
came in on; an operator is never a participant (never planned, never listed as online).

Signals: SIGTERM / SIGINT stop the loop after the current step (the state on disk is already
complete: plan, acknowledged updates, checkpoints), SIGHUP reloads the roster at once (the file
is also watched). A revoked participant leaves the round and its messages are refused
('unknown-sender'); libzmq cannot close one peer of a bound ROUTER, so the socket is rebound:
every peer reconnects through ZAP, and the revoked one's handshake fails.

Why one module of ~500 lines: what is left here is the wiring of the socket-free parts to the
one socket and the one loop (construction, the handler table, the fault barrier, the signal
and roster handling); each handler is a few lines that call a part. Splitting it would spread
one loop's state over several files without moving a decision out of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import zmq

from latentfl.durable import fsync_beside
from latentfl.errors import (
    AddressInUseError,
    LatentFLError,
    ProtocolError,
    Reason,
    SecurityError,
    StateError,
)
from latentfl.exitcodes import ExitCode
from latentfl.log import get_logger
from latentfl.models import model_manifest, state_length
from latentfl.platform.coordinator.admin import AdminService
from latentfl.platform.coordinator.audits.requests import AuditRequests
from latentfl.platform.coordinator.audits.service import AUDIT_KINDS, AuditService
from latentfl.platform.coordinator.ckks_sum import EncryptedSum
from latentfl.platform.coordinator.conductor import RoundConductor
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.intake import GroupFailed, UpdateIntake
from latentfl.platform.coordinator.journal import Journal, verify_against_checkpoint
from latentfl.platform.coordinator.peers import PeerTable
from latentfl.platform.coordinator.refusals import RefusalCoalescer
from latentfl.platform.coordinator.roster_watch import RosterWatcher
from latentfl.platform.coordinator.rounds import Rounds, make_evaluator
from latentfl.platform.coordinator.router import Router
from latentfl.platform.coordinator.secagg_exchange import MaskedAggregation
from latentfl.platform.coordinator.status import collect_status, status_snapshot
from latentfl.platform.coordinator.store import StateStore, write_json_atomic
from latentfl.platform.crypto import (
    COORDINATOR_ID,
    load_identity,
    load_roster,
    peer_user_id,
    start_authenticator,
)
from latentfl.platform.protocol import (
    DEFAULT_CLOCK_SKEW_S,
    FROM_OPERATOR,
    Decline,
    Header,
    Heartbeat,
    Kind,
    Message,
    Outgoing,
    Reject,
    ReplayGuard,
    Verifier,
    pack_json,
    peek_header,
)
from latentfl.platform.wakeup import Wakeup, timeout_ms
from latentfl.platform.wire.hello import accepted_task_meta, decode_hello
from latentfl.privacy import PolicyRule
from latentfl.strategies import Aggregation, build_strategy

#: status.json is rewritten at most this often (seconds), and only when it changed.
STATUS_EVERY_S = 1.0
ZAP_REFUSED = "zap_refused"  # journal event of a refused CURVE handshake
STOP_WAIT_S = 120.0  # on SIGTERM, how long a running aggregation may take to checkpoint

Outbox = list[Outgoing]


class Coordinator:
    """One coordinator session; :meth:`run` serves until the last round or a stop."""

    def __init__(self, config: CoordinatorConfig, *, accept_journal_loss: bool = False) -> None:
        """``accept_journal_loss``: start even when the journal no longer holds what the latest
        checkpoint recorded (deleted, emptied, truncated); the loss is journaled. Without it
        such a start is refused with StateError."""
        self.config = config
        self.log = get_logger("coordinator", session=config.session)
        # a start that fails before serving (port in use) leaves no folder it created behind
        self._fresh_state = not Path(config.state_dir).exists()
        self._discard_state = False
        self.identity = load_identity(config.key_dir)
        if self.identity.id != COORDINATOR_ID:
            raise SecurityError(f"key folder {config.key_dir} holds the keys of "
                                f"{self.identity.id!r}; expected the coordinator's keys.")
        roster = load_roster(config.roster)
        if roster.coordinator_curve_public != self.identity.curve_public:
            raise SecurityError(f"roster {config.roster} enrols another coordinator CURVE key "
                                f"than the one in {config.key_dir}; expected the same consortium.")
        self.roster_watch = RosterWatcher(config.roster, roster)
        self.store = StateStore(config.state_dir)
        self.store.lock()
        try:
            self._open_journal(accept_journal_loss)
        except BaseException:
            self.store.unlock()
            raise
        # with group commit the replay log is fsynced once per group (``_commit_updates``)
        self.replay = ReplayGuard(self.store.replay_path, window_s=DEFAULT_CLOCK_SKEW_S,
                                  fsync=not config.group_commit)
        self.verifier = Verifier.of_roster(roster, session=config.session, replay=self.replay,
                                           max_bytes=config.max_message_bytes)
        self.strategy = build_strategy(config.strategy)
        self.manifest = model_manifest(config.strategy.model.build())
        self.rounds = Rounds(config, self.strategy, self.store, evaluate=make_evaluator(config),
                             journal_anchor=self.journal.anchor)
        self.audit_requests = AuditRequests(self.store, self.journal)
        self.audits = AuditService(self.store, self.journal, session=config.session,
                                   signing_key=self.identity.signing_key,
                                   method=self.strategy.name,
                                   synthetic=lambda: self.rounds.synthetic,
                                   requests=self.audit_requests)
        # ckks: the public context only (a secret one is refused here, before anything runs)
        mode = config.aggregation.mode
        encrypted = (EncryptedSum(config, state_length(self.manifest), journal=self.journal)
                     if mode == Aggregation.CKKS else None)
        # secagg and ckks: adverts are checked against the roster's signing keys as they are now
        self.masked = (MaskedAggregation(config, self.manifest, journal=self.journal,
                                         verify_keys=lambda: self.roster_watch.roster
                                         .verify_keys(), encrypted=encrypted)
                       if mode in (Aggregation.SECAGG, Aggregation.CKKS) else None)
        self.intake = UpdateIntake(config, self.rounds, self.journal, self.manifest, self.masked)
        # wakes the loop from other threads: an aggregation done, a stop, a reload
        self._wakeup = Wakeup()
        self.conductor = RoundConductor(config, self.rounds, self.journal, self.manifest,
                                        self.masked, on_aggregated=self._wakeup.set,
                                        task_meta=self._task_meta)
        self.admin = AdminService(self.store, self.journal, self.conductor,
                                  roster=lambda: self.roster_watch.roster,
                                  status=self.admin_status, session=config.session,
                                  audit_requests=self.audit_requests)
        self.router = Router(self.identity, session=config.session,
                             max_message_bytes=config.max_message_bytes)
        self.handlers: dict[Kind, Callable[[Message], Outbox]] = {
            Kind.HEARTBEAT: self._on_heartbeat, Kind.HELLO: self._on_hello,
            Kind.UPDATE: self._on_update, Kind.ENCRYPTED_UPDATE: self._on_update,
            Kind.AGGREGATE: self.conductor.receive_aggregate, Kind.DECLINE: self._on_decline,
            Kind.BYE: self._on_bye,
            Kind.MASKED_UPDATE: self._on_update, Kind.SECAGG_KEYS: self.conductor.receive_secagg,
            Kind.SECAGG_SHARES: self.conductor.receive_secagg,
            Kind.SECAGG_SIGNATURE: self.conductor.receive_secagg,
            Kind.SECAGG_REVEAL: self.conductor.receive_secagg,
        }
        #: Observers of every message the daemon sends a participant: ``fn(pid, frames)``.
        self.send_observers = self.router.observers
        self.peers = PeerTable(heartbeat_timeout=config.heartbeat_timeout, session=config.session)
        self._stop = threading.Event()
        self._reload = False
        self._status_due = 0.0
        self._status_written: dict[str, Any] | None = None
        self._status_pending = False
        self._auth: Any = None
        self.refusals = RefusalCoalescer()
        self._zap_last: dict[str | None, str] = {}  # the latest refused fingerprint per id
        self.boot_id = os.urandom(8).hex()

    def _open_journal(self, accept_loss: bool) -> None:
        """Clean what a crash left mid-write, check the journal against the latest checkpoint,
        and open it (journaling an accepted loss or the removed temp files)."""
        removed = self.store.remove_orphan_temps()
        loss, kept = None, None
        path = self.store.journal_path
        try:
            verify_against_checkpoint(path, self.store.root)
        except StateError as exc:
            if not accept_loss:
                raise
            loss = str(exc)
            if path.exists():  # kept as evidence; the new chain starts empty
                kept = path.with_name(f"{path.name}.lost-{int(time.time())}")
                path.rename(kept)
        self.journal = Journal(path)
        if loss is not None:
            self.journal.append("journal_loss_accepted", detail=loss[:500],
                                kept=kept.name if kept else None)
            self.store.record_journal_anchor(self.journal.anchor())
            self.log.warning("journal_loss_accepted", detail=loss)
        if removed:
            self.journal.append("temp_files_removed", count=removed)
            self.log.info("temp_files_removed", count=removed)

    @property
    def endpoint(self) -> str:
        """The endpoint the ROUTER is bound to (the configured one until :meth:`run` binds)."""
        return self.router.endpoint or self.config.bind

    # -- lifecycle ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish its current step and return (thread-safe)."""
        self._stop.set()
        self._wakeup.set()

    def reload(self) -> None:
        """Re-read the roster at the loop's next step (SIGHUP; thread-safe)."""
        self._reload = True
        self._wakeup.set()

    def run(self, *, handle_signals: bool = True, ready: threading.Event | None = None) -> int:
        """Serve until all rounds are done and ``linger_s`` has passed (0), or until a
        stop/SIGTERM (130, also while lingering after the last round)."""
        if handle_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
            signal.signal(signal.SIGHUP, lambda *_: self.reload())
        ctx = zmq.Context()
        auth = self._auth = start_authenticator(ctx, self.roster_watch.roster)
        try:
            try:
                self.router.open(ctx, self.config.bind)
            except AddressInUseError:
                self._discard_state = self._fresh_state
                raise
            self.store.pid_path.write_text(f"{os.getpid()}\n")
            self.rounds.resume()
            self.journal.append("started", round=self.rounds.round, phase=self.rounds.phase,
                                endpoint=self.endpoint)
            self.log.info("coordinator_started", endpoint=self.endpoint, round=self.rounds.round,
                          phase=self.rounds.phase, resumed_updates=len(self.rounds.updates),
                          summary=self._startup_summary())
            if self.rounds.phase != "finished":
                self.admin.check_stall("the start (the roster and the removals kept)")
            self._write_status(force=True)
            if ready is not None:
                ready.set()
            self._loop()
            if self.conductor.worker.busy:  # stopped mid-aggregation: let it checkpoint
                self.log.info("waiting_for_aggregation", round=self.rounds.round)
                self.conductor.finish(wait=STOP_WAIT_S)
            finished = self.rounds.phase == "finished"
            if finished:
                self._send_all(self._finished_notices())
            self._journal_refusals(time.time(), everything=True)
            self.journal.append("stopped", round=self.rounds.round, phase=self.rounds.phase)
            self.log.info("coordinator_stopped", round=self.rounds.round, phase=self.rounds.phase)
            self._write_status(force=True, stopped=True)
            # a signal (or stop()) is an interruption even after the last round, while the
            # daemon lingers: the exit-code table reserves 0 for a run that ended by itself
            interrupted = self._stop.is_set() or not finished
            return int(ExitCode.INTERRUPTED if interrupted else ExitCode.OK)
        finally:
            self.conductor.stop()  # a distillation group must not outlive the daemon
            self.router.close()
            auth.stop()
            ctx.term()
            self.journal.close()
            self.replay.close()
            self.store.pid_path.unlink(missing_ok=True)
            self.store.unlock()
            self._wakeup.close()
            if self._discard_state:
                shutil.rmtree(self.config.state_dir, ignore_errors=True)

    def _startup_summary(self) -> str:
        """The start-up line for people: where it listens and what it waits for."""
        rounds, enrolled = self.rounds, len(self.roster_watch.roster.active_ids())
        where = f"listening on {self.endpoint}, session {self.config.session}"
        if rounds.phase == "finished":
            return f"{where}; all {self.config.rounds} rounds are done"
        if rounds.phase == "collecting":
            return (f"{where}; resuming round {rounds.round} of {self.config.rounds} with "
                    f"{len(rounds.updates)} of {len(rounds.plan)} updates")
        return (f"{where}; round {rounds.round} of {self.config.rounds} waits for "
                f"{self.config.min_participants} of {enrolled} enrolled participants")

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router.socket, zmq.POLLIN)
        poller.register(self._wakeup, zmq.POLLIN)
        next_roster_check = 0.0
        linger_until = None  # after the last round, serve audit fetches for config.linger_s
        while not self._stop.is_set():
            if self.rounds.phase == "finished":
                if linger_until is None:
                    linger_until = time.time() + self.config.linger_s
                    if self.config.linger_s > 0:
                        self.log.info("lingering", seconds=self.config.linger_s)
                if time.time() >= linger_until:
                    break
            # no tick: sleep until a message, the worker's wake-up or the earliest deadline
            now = time.time()
            deadlines = [next_roster_check, linger_until, self._status_next(),
                         self.peers.next_expiry(), self.conductor.next_deadline(),
                         self.refusals.next_due()]
            # the roster check is re-armed whenever it runs, so one that is due never spins
            timeout = 0 if now >= next_roster_check else timeout_ms(now, deadlines)
            events = dict(poller.poll(timeout))
            self._wakeup.clear()
            if self.router.socket in events:
                for _ in range(256):  # drain what is queued, then look after time
                    try:
                        frames = self.router.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._receive(frames)
                    if not self.config.group_commit:
                        self._commit_updates()
                self._commit_updates()  # what arrived together is made durable together
            now = time.time()
            if self._reload or now >= next_roster_check:
                if self._check_roster(force=self._reload):
                    poller.unregister(self.router.socket)
                    poller.register(self.router.rebind(), zmq.POLLIN)
                    self.journal.append("connections_dropped", endpoint=self.endpoint)
                    self.log.info("connections_dropped", endpoint=self.endpoint)
                self._reload = False
                next_roster_check = now + self.config.roster_poll
            self._send_all(self._step(now))
            self._journal_refusals(now)
            self._write_status()

    # -- time-driven steps ----------------------------------------------------------------
    def online(self) -> list[str]:
        return self.peers.online()

    def _step(self, now: float) -> Outbox:
        self.peers.sweep(now)
        closed = self.conductor.finish()  # the loop writes the status after the step
        outbox = self.conductor.step(self.admin.eligible(self.peers.online()), now)
        if closed is not None:  # its journal lines, if no round_opened fsynced them
            self.journal.sync()
        return outbox

    # -- receive, verify, dispatch, send --------------------------------------------------
    def _receive(self, frames: list[zmq.Frame]) -> None:
        """The fault barrier: whatever goes wrong while handling one message, of any type,
        ends as a REJECT to its peer and a journal line; the loop keeps serving."""
        routing_id, body = frames[0].bytes, frames[1:]
        user_id = peer_user_id(body[0]) if body else None
        header = None
        try:
            message = self.verifier.verify(body, user_id=user_id)
            header = message.header
            self._dispatch(routing_id, message)
        except ProtocolError as exc:
            self._refuse(routing_id, user_id, body, exc, header=header)
        except Exception as exc:  # noqa: BLE001 - the barrier: no peer may stop the daemon
            # A message our own code could not handle: refuse it and keep serving (the
            # traceback goes to the log, the reason to the peer and the journal).
            self.log.exception("message_failed", peer=user_id,
                               kind=header.kind.value if header else None)
            failure = ProtocolError(Reason.INTERNAL, f"the coordinator could not process this "
                                                     f"message ({type(exc).__name__}).")
            self._refuse(routing_id, user_id, body, failure, header=header)

    def _dispatch(self, routing_id: bytes, message: Message) -> None:
        pid, kind = message.header.sender, message.header.kind
        if kind in AUDIT_KINDS:  # a one-shot audit client beside the agent: answer
            # its connection, keep the agent's
            self.router.send_frames(routing_id, self.audits.answer(message, self.rounds.round))
            self.log.info("audit_answered", peer=pid, kind=kind.value)
            return
        if kind in FROM_OPERATOR:  # never a participant: not a peer, never planned
            self._answer_operator(routing_id, message)
            return
        self.peers.seen(pid, routing_id, time.time())
        self._send_all(self.handlers[kind](message))
        # an operator's audit request reaches the agent at its next contact (see audits/requests.py)
        if kind is not Kind.BYE:
            self._send_all(self.audit_requests.deliveries(pid, self.rounds.round,
                                                          reconnected=kind is Kind.HELLO))

    def _answer_operator(self, routing_id: bytes, message: Message) -> None:
        """An operator's command: applied, answered on the connection it came in on."""
        result = self.admin.answer(message)
        self.router.send(routing_id, Kind.ADMIN_RESULT, round=self.rounds.round,
                         payload=pack_json(result))
        self._write_status()

    def _send_all(self, outbox: Outbox) -> None:
        for out in outbox:
            peer = self.peers.get(out.peer)
            if peer is not None and peer.routing_id:
                self.router.send(peer.routing_id, out.kind, round=out.round, payload=out.payload,
                                 meta=out.meta, peer=out.peer)

    def _refuse(self, routing_id: bytes, user_id: str | None, body: list, exc: ProtocolError,
                header: Header | None = None) -> None:
        header = header or peek_header(body)
        size = sum(len(f) for f in body)
        self.log.warning("message_refused", peer=user_id, reason=exc.reason, bytes=size,
                         detail=str(exc)[:200])
        try:
            if self.refusals.admit(user_id, str(exc.reason), time.time()):
                self.journal.append("refused", peer=user_id, reason=exc.reason,
                                    detail=str(exc)[:500], count=1,
                                    kind=header.kind.value if header else None,
                                    round=header.round if header else None, bytes=size)
        except Exception:  # noqa: BLE001 - a failing journal must not stop the answer either
            self.log.exception("journal_failed", peer=user_id, reason=exc.reason)
        if user_id is None:
            return
        reject = Reject(Reason.parse(exc.reason) or Reason.INTERNAL, str(exc),
                        header.kind if header else None, header.round if header else None)
        self.router.send(routing_id, Kind.REJECT, round=self.rounds.round, meta=reject.meta())

    def _journal_refusals(self, now: float, *, everything: bool = False) -> None:
        """Journal the ZAP refusals queued by the authenticator's thread, and the counts of
        refusals coalesced in intervals that ended (see ``refusals``)."""
        for zap in self._auth.refusals():
            self.log.warning("zap_refused", fingerprint=zap.fingerprint,
                             participant=zap.participant)
            # keys never enrolled cost nothing to make: they share one bucket, so new keys
            # cannot add lines faster than a known one
            self._zap_last[zap.participant] = zap.fingerprint
            if self.refusals.admit(zap.participant, ZAP_REFUSED, now):
                self.journal.append(ZAP_REFUSED, fingerprint=zap.fingerprint,
                                    participant=zap.participant, count=1)
        for batch in self.refusals.due(now, everything=everything):
            if batch.reason == ZAP_REFUSED:
                self.journal.append(ZAP_REFUSED, fingerprint=self._zap_last.get(batch.peer),
                                    participant=batch.peer, count=batch.count,
                                    detail=batch.sentence)
            else:
                self.journal.append("refused", peer=batch.peer, reason=batch.reason,
                                    count=batch.count, detail=batch.sentence)

    # -- handlers: one per kind a participant may send ------------------------------------
    def _on_heartbeat(self, message: Message) -> Outbox:
        pid = message.header.sender
        self.journal.append("accepted", kind=Kind.HEARTBEAT.value, peer=pid, durable=False)
        return [Outgoing(pid, Kind.HEARTBEAT, self.rounds.round,
                         meta=Heartbeat(self.boot_id, self.rounds.phase).meta())]

    def _on_hello(self, message: Message) -> Outbox:
        pid = message.header.sender
        hello = decode_hello(message.payload)
        self.peers[pid].hello = hello
        # the site's own budget, for the consortium report (absent: an agent predating it)
        budget = {"max_epsilon": hello.max_epsilon} if hello.budget_stated else {}
        self.journal.append("accepted", kind=Kind.HELLO.value, peer=pid,
                            examples=hello.num_examples, **budget)
        self.log.info("hello", peer=pid, examples=hello.num_examples, **budget)
        if self.rounds.phase == "finished":
            return [Outgoing(pid, Kind.STATUS, self.rounds.round, meta={"phase": "finished"})]
        if self.rounds.phase == "collecting" and pid in self.rounds.pending():
            return self.conductor.task_for(pid)
        return []

    def _task_meta(self, pid: str) -> Collection[str]:
        peer = self.peers.get(pid)
        return accepted_task_meta(peer.hello if peer is not None else None)

    def _on_bye(self, message: Message) -> Outbox:
        pid = message.header.sender
        self.journal.append("accepted", kind=Kind.BYE.value, peer=pid)
        self.peers[pid].online = False
        self.log.info("participant_left", peer=pid)
        return []

    def _on_decline(self, message: Message) -> Outbox:
        """A participant declined its task (site policy, failed training): stop waiting for it."""
        header, pid = message.header, message.header.sender
        decline = Decline.from_meta(header.meta)
        self.journal.append("declined", peer=pid, reason=decline.reason.value,
                            detail=decline.detail[:500], round=header.round)
        self.log.warning("task_declined", peer=pid, reason=decline.reason.value,
                         round=header.round)
        if header.round == self.rounds.round and pid in self.rounds.pending():
            self.rounds.drop([pid])
        if decline.reason == PolicyRule.SECAGG_ALREADY_UPLOADED:
            self.conductor.declined_for_good(pid, header.round)
        return []

    def _on_update(self, message: Message) -> Outbox:
        pid, r = message.header.sender, message.header.round
        if pid in self.admin.removed:  # whatever the round's phase: say why, once and final
            raise ProtocolError(Reason.NOT_IN_ROUND, (
                f"{pid} was removed from this session by an operator; its update for round "
                f"{r} is not used (ask the operator to `latentfl admin readmit {pid}`)."))
        return self.intake.receive(message)  # held for _commit_updates, or a re-send's ACK

    def _commit_updates(self) -> None:
        """Make the held updates durable (one group), then send their ACKs; if that fails,
        refuse each of them as 'internal' (nothing of the group was kept)."""
        # the nonces of the group go to disk beside its files, and are durable before its
        # ACKs leave too
        nonces = fsync_beside(self.replay.sync)
        try:
            acks, _ = self.intake.commit()
        except GroupFailed as failed:
            self.log.error("group_commit_failed", updates=len(failed.messages),
                           error=repr(failed.cause))
            for message in failed.messages:
                pid = message.header.sender
                peer = self.peers.get(pid)
                refusal = ProtocolError(Reason.INTERNAL, "the coordinator could not store this "
                                                         f"update ({type(failed.cause).__name__}).")
                self._refuse(peer.routing_id if peer else b"", pid,
                             [message.raw_header, message.signature, message.payload], refusal,
                             header=message.header)
            return
        nonces.result()
        self._send_all(acks)

    # -- roster, status -------------------------------------------------------------------
    def _check_roster(self, force: bool = False) -> bool:
        """Apply a changed roster (keys, allow-list, round plan); True when someone was revoked."""
        try:
            change = self.roster_watch.poll(force=force)
        except LatentFLError as exc:  # keep serving with the last good roster
            self.journal.append("roster_reload_failed", detail=str(exc)[:500])
            self.log.error("roster_reload_failed", detail=str(exc))
            return False
        if change is None:
            return False
        self._auth.update_roster(change.roster)
        self.verifier.update_roster(change.roster)
        self.peers.forget(change.revoked)
        self.rounds.drop(change.revoked)
        active = change.roster.active_ids()
        self.journal.append("roster_reloaded", active=active, revoked=change.revoked)
        self.log.info("roster_reloaded", active=len(active), revoked=change.revoked)
        self.admin.check_stall(f"revoking {', '.join(change.revoked)}" if change.revoked
                               else "a roster change")
        self._write_status()
        return bool(change.revoked)

    def status(self, *, stopped: bool = False) -> dict[str, Any]:
        """What status.json holds (``latentfl status`` reads it with the journal)."""
        return {**status_snapshot(self.config, self.rounds, self.peers, endpoint=self.endpoint,
                                  now=time.time(), stopped=stopped),
                "pid": os.getpid(), "admin": self.admin.state()}

    def admin_status(self) -> dict[str, Any]:
        """What ``latentfl admin status`` returns: ``latentfl status --json`` plus the admin state."""
        return {**collect_status(self.config, live=self.status()), "admin": self.admin.state()}

    def _write_status(self, *, force: bool = False, stopped: bool = False) -> None:
        """Rewrite status.json when what it says changed, at most once every STATUS_EVERY_S
        (``force``: now, at start and stop). It is a live view that says nothing once the
        daemon is gone, so it is replaced atomically for readers but not fsynced."""
        now = time.time()
        if not force and now < self._status_due:
            self._status_pending = True  # looked at again once due (_status_next)
            return
        self._status_pending = False
        snapshot = self.status(stopped=stopped)
        content = {k: v for k, v in snapshot.items() if k != "updated"}
        if content == self._status_written:
            return
        self._status_due = now + STATUS_EVERY_S
        self._status_written = content
        write_json_atomic(self.store.status_path, snapshot, fsync=False)

    def _status_next(self) -> float | None:
        """When the loop must wake to write a status change it held back (None: none held)."""
        return self._status_due if self._status_pending else None

    def _finished_notices(self) -> Outbox:
        self.journal.append("finished", rounds=self.config.rounds)
        return [Outgoing(pid, Kind.STATUS, self.rounds.round, meta={"phase": "finished"})
                for pid, peer in self.peers.items() if peer.online]


__all__ = ["Coordinator", "make_evaluator"]
