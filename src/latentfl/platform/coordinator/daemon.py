"""The coordinator daemon: a ZeroMQ ROUTER (CURVE server, roster-fed ZAP) around the rounds.

One thread owns the socket and the loop; the ZAP authenticator runs in its own thread. Each
message is verified by the protocol's Verifier (frames, ZAP User-Id = sender, signature,
session, nonce, timestamp, payload hash), then by kind. Any ProtocolError becomes a REJECT to
that peer naming the reason, a journal entry and one log line; the loop keeps serving.

Signals: SIGTERM / SIGINT stop the loop after the current step (the state on disk is already
complete: plan, acknowledged updates, checkpoints), SIGHUP reloads the roster at once (the file
is also watched). A revoked participant leaves the round and its messages are refused
('unknown-sender'); libzmq cannot close one peer of a bound ROUTER, so the socket is rebound:
every peer reconnects through ZAP, and the revoked one's handshake fails.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from latentfl.errors import LatentFLError, ProtocolError, SecurityError
from latentfl.exitcodes import ExitCode
from latentfl.log import get_logger
from latentfl.platform.coordinator.audit_service import AUDIT_KINDS, AuditService
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.coordinator.roster_watch import RosterWatcher
from latentfl.platform.coordinator.rounds import Rounds, make_evaluator
from latentfl.platform.coordinator.secure import SecureAggregation
from latentfl.platform.coordinator.status import status_snapshot
from latentfl.platform.coordinator.store import StateStore, write_json_atomic
from latentfl.platform.crypto import (
    COORDINATOR_ID,
    load_identity,
    load_roster,
    make_curve_server,
    peer_user_id,
    start_authenticator,
)
from latentfl.platform.payloads import (
    PRIVACY_META,
    decode_encrypted_update,
    decode_update,
    encode_decrypt_task,
    encode_task,
)
from latentfl.platform.protocol import (
    DEFAULT_CLOCK_SKEW_S,
    Kind,
    Message,
    ReplayGuard,
    Verifier,
    encode,
    peek_header,
    unpack_json,
)
from latentfl.strategies import Update, build_strategy

POLL_MS = 100
ZMQ_SIZE_SLACK = 2**20
STOP_WAIT_S = 120.0  # on SIGTERM, how long a running aggregation may take to checkpoint


@dataclass
class Peer:
    """What the coordinator knows about one participant's connection."""

    routing_id: bytes = b""
    last_seen: float = 0.0
    online: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    accepted: int = 0
    refused: int = 0


class Coordinator:
    """One coordinator session; :meth:`run` serves until the last round or a stop."""

    def __init__(self, config: CoordinatorConfig) -> None:
        from latentfl.models import model_manifest

        self.config = config
        self.log = get_logger("coordinator", session=config.session)
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
        self.journal = Journal(self.store.journal_path)
        self.replay = ReplayGuard(self.store.replay_path, window_s=DEFAULT_CLOCK_SKEW_S)
        self.verifier = Verifier.of_participants(roster, session=config.session,
                                                 replay=self.replay,
                                                 max_bytes=config.max_message_bytes)
        self.strategy = build_strategy(config.strategy)
        self.audits = AuditService(self.store, self.journal, session=config.session,
                                   signing_key=self.identity.signing_key,
                                   method=self.strategy.name,
                                   synthetic=lambda: self.rounds.synthetic)
        self.manifest = model_manifest(config.strategy.model.build())
        # CKKS: the public context only (a secret one is refused here, before anything runs)
        self.secure = (SecureAggregation(config, self.manifest)
                       if config.aggregation.mode == "ckks" else None)
        #: Observers of every message the daemon sends: ``fn(pid, frames)`` (audit, tests).
        self.send_observers: list[Any] = []
        self.rounds = Rounds(config, self.strategy, self.store,
                             evaluate=make_evaluator(config))
        self.peers: dict[str, Peer] = {}
        self._stop = threading.Event()
        self._reload = False
        self._status_due = 0.0
        self._task_cache: dict[tuple[int, int], tuple[bytes, dict]] = {}
        self._aggregation: tuple[threading.Thread, list, float] | None = None
        self.socket: zmq.Socket | None = None
        self._auth: Any = None
        self.boot_id = os.urandom(8).hex()
        self.endpoint = config.bind

    # -- lifecycle ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish its current step and return (thread-safe)."""
        self._stop.set()

    def run(self, *, handle_signals: bool = True, ready: threading.Event | None = None) -> int:
        """Serve until all rounds are done (0) or a stop/SIGTERM (130)."""
        if handle_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
            signal.signal(signal.SIGHUP, lambda *_: setattr(self, "_reload", True))
        ctx = zmq.Context()
        auth = self._auth = start_authenticator(ctx, self.roster_watch.roster)
        try:
            sock = self._open_socket(ctx, self.config.bind)
            self.store.pid_path.write_text(f"{os.getpid()}\n")
            self.rounds.resume()
            self.journal.append("started", round=self.rounds.round, phase=self.rounds.phase,
                                endpoint=self.endpoint)
            self.log.info("coordinator_started", endpoint=self.endpoint, round=self.rounds.round,
                          phase=self.rounds.phase, resumed_updates=len(self.rounds.updates))
            self._write_status(force=True)
            if ready is not None:
                ready.set()
            self._loop(sock)
            if self._aggregation is not None:  # stopped mid-aggregation: let it checkpoint
                self.log.info("waiting_for_aggregation", round=self.rounds.round)
                self._finish_aggregation(wait=STOP_WAIT_S)
            finished = self.rounds.phase == "finished"
            if finished:
                self._broadcast_finished(self.socket)
            self.journal.append("stopped", round=self.rounds.round, phase=self.rounds.phase)
            self.log.info("coordinator_stopped", round=self.rounds.round, phase=self.rounds.phase)
            self._write_status(force=True, stopped=True)
            return int(ExitCode.OK if finished else ExitCode.INTERRUPTED)
        finally:
            if self.socket is not None:
                self.socket.close(linger=2000)
            auth.stop()
            ctx.term()
            self.journal.close()
            self.replay.close()
            self.store.pid_path.unlink(missing_ok=True)
            self.store.unlock()

    def _open_socket(self, ctx: zmq.Context, endpoint: str) -> zmq.Socket:
        """A CURVE-server ROUTER bound to ``endpoint`` (retrying while the old one lets go)."""
        sock = ctx.socket(zmq.ROUTER)
        make_curve_server(sock, self.identity)
        # libzmq drops (without telling us) a connection sending a frame over MAXMSGSIZE;
        # the slack lets moderately oversized messages through to a journaled REJECT.
        sock.maxmsgsize = self.config.max_message_bytes + ZMQ_SIZE_SLACK
        for attempt in range(50):
            try:
                sock.bind(endpoint)
                break
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or attempt == 49:
                    sock.close(linger=0)
                    raise
                time.sleep(0.1)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.socket = sock
        return sock

    def _rebind(self, poller: zmq.Poller, sock: zmq.Socket) -> zmq.Socket:
        """Drop every connection by rebinding: peers reconnect through ZAP, revoked ones cannot.

        A ROUTER cannot close one peer's connection, so after a revocation the socket is
        replaced; participants' DEALERs reconnect on their own and re-run the CURVE handshake
        against the updated allow-list.
        """
        poller.unregister(sock)
        endpoint = self.endpoint
        sock.close(linger=0)
        sock = self._open_socket(sock.context, endpoint)
        poller.register(sock, zmq.POLLIN)
        self.journal.append("connections_dropped", endpoint=endpoint)
        self.log.info("connections_dropped", endpoint=endpoint)
        return sock

    def _loop(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
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
            if poller.poll(POLL_MS):
                for _ in range(256):  # drain what is queued, then look after time
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(sock, frames)
            now = time.time()
            if self._reload or now >= next_roster_check:
                if self._check_roster(force=self._reload):
                    sock = self._rebind(poller, sock)
                self._reload = False
                next_roster_check = now + self.config.roster_poll
            self._step(sock, now)
            self._write_status()

    # -- time-driven steps ----------------------------------------------------------------
    def online(self) -> list[str]:
        return sorted(pid for pid, p in self.peers.items() if p.online)

    def _step(self, sock: zmq.Socket, now: float) -> None:
        for pid, peer in self.peers.items():
            if peer.online and now - peer.last_seen > self.config.heartbeat_timeout:
                peer.online = False
                self.log.info("participant_offline", peer=pid, silent_s=round(now - peer.last_seen, 1))
        tasks = self.rounds.maybe_start(self.online(), now)
        if tasks:
            self.journal.append("round_opened", round=self.rounds.round, participants=sorted(tasks))
            self.log.info("round_opened", round=self.rounds.round, participants=sorted(tasks))
            for pid in tasks:
                self._send_task(sock, pid)
        if self._aggregation is not None:
            self._finish_aggregation()
            return
        if self.secure is not None and self.secure.waiting:
            self._ask_decryptor(sock, now)
            return
        verdict = self.rounds.due(self.online(), now)
        if verdict == "replan":
            self.journal.append("round_abandoned", round=self.rounds.round,
                                accepted=sorted(self.rounds.updates))
            self.log.warning("round_abandoned", round=self.rounds.round,
                             accepted=len(self.rounds.updates))
            self.rounds.replan()
            if self.secure is not None:
                self.secure.reset()
        elif verdict == "close" and self.secure is not None:
            self.rounds.begin_close()
            self.secure.start(self.rounds.round, self.rounds.updates)
            self.journal.append("encrypted_sum", round=self.rounds.round,
                                covers=self.secure.cohort, total_weight=self.secure.total_weight)
            self.log.info("encrypted_sum", round=self.rounds.round,
                          covers=len(self.secure.cohort), ciphertexts=len(self.secure.sum))
            self._ask_decryptor(sock, now)
        elif verdict == "close":
            self.rounds.begin_close()
            self._start_aggregation()

    def _ask_decryptor(self, sock: zmq.Socket, now: float) -> None:
        """Send the encrypted sum (never an individual upload) to the participant due to decrypt."""
        pid = self.secure.next_decryptor(self.online(), now)
        if pid is None:
            return
        payload, meta = encode_decrypt_task(self.secure.sum, total_weight=self.secure.total_weight,
                                            length=self.secure.length,
                                            cohort=len(self.secure.cohort),
                                            model=self.config.strategy.model,
                                            manifest_digest=self.manifest.digest)
        self._send(sock, pid, Kind.TASK, round=self.rounds.round, payload=payload, meta=meta)
        self.journal.append("decrypt_requested", round=self.rounds.round, peer=pid,
                            covers=self.secure.cohort, attempt=len(self.secure.asked))
        self.log.info("decrypt_requested", round=self.rounds.round, peer=pid, bytes=len(payload))

    def _start_aggregation(self, aggregate: Update | None = None) -> None:
        """Aggregate in a worker thread, so heartbeats and late messages are still answered."""
        self.log.info("round_aggregating", round=self.rounds.round,
                      accepted=len(self.rounds.updates), planned=len(self.rounds.plan))
        outcome: list = []

        def work() -> None:
            try:
                outcome.append(self.rounds.aggregate(aggregate))
            except BaseException as exc:  # re-raised in the loop's thread
                outcome.append(exc)

        thread = threading.Thread(target=work, name="aggregate", daemon=True)
        self._aggregation = (thread, outcome, time.perf_counter())
        thread.start()

    def _finish_aggregation(self, wait: float = 0.0) -> None:
        thread, outcome, started = self._aggregation
        thread.join(wait)
        if thread.is_alive():
            return
        self._aggregation = None
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        record = self.rounds.finish_close(outcome[0])
        self._task_cache.clear()
        self.journal.append("round_closed", round=record.round, accepted=record.accepted,
                            metrics=record.metrics)
        self.log.info("round_closed", round=record.round, accepted=len(record.accepted),
                      planned=len(record.participants), seconds=round(record.seconds, 3),
                      aggregate_s=round(time.perf_counter() - started, 3), **record.metrics)
        self._write_status(force=True)

    # -- messages -------------------------------------------------------------------------
    def _send(self, sock: zmq.Socket, pid: str, kind: Kind, *, round: int,
              payload: bytes = b"", meta: dict | None = None) -> None:
        peer = self.peers.get(pid)
        if peer is None or not peer.routing_id:
            return
        frames = encode(kind, session=self.config.session, round=round, sender=COORDINATOR_ID,
                        signing_key=self.identity.signing_key, payload=payload, meta=meta)
        for observe in self.send_observers:
            observe(pid, frames)
        sock.send_multipart([peer.routing_id, *frames])

    def _send_task(self, sock: zmq.Socket, pid: str) -> None:
        task = self.rounds.tasks.get(pid)
        if task is None:
            return
        key = (id(task.weights), hash(repr(task.train)) ^ hash(task.aggregation))
        if key not in self._task_cache:
            self._task_cache[key] = encode_task(task, self.config.strategy.model,
                                                self.manifest.digest)
        payload, meta = self._task_cache[key]
        self._send(sock, pid, Kind.TASK, round=task.round, payload=payload, meta=meta)
        self.log.info("task_sent", round=task.round, peer=pid, bytes=len(payload))

    def _handle(self, sock: zmq.Socket, frames: list[zmq.Frame]) -> None:
        routing_id, body = frames[0].bytes, frames[1:]
        user_id = peer_user_id(body[0]) if body else None
        try:
            message = self.verifier.verify(body, user_id=user_id)
        except ProtocolError as exc:
            self._refuse(sock, routing_id, user_id, body, exc)
            return
        pid = message.header.sender
        if message.header.kind in AUDIT_KINDS:  # a one-shot audit client beside the agent:
            try:                                 # answer its connection, keep the agent's
                sock.send_multipart([routing_id, *self.audits.answer(message, self.rounds.round)])
                self.log.info("audit_answered", peer=pid, kind=message.header.kind.value)
            except ProtocolError as exc:
                self._refuse(sock, routing_id, user_id, body, exc, header=message.header)
            return
        peer = self.peers.setdefault(pid, Peer())
        peer.routing_id, peer.last_seen = routing_id, time.time()
        if not peer.online:
            peer.online = True
            self.log.info("participant_online", peer=pid)
        try:
            self._dispatch(sock, pid, message)
        except ProtocolError as exc:
            self._refuse(sock, routing_id, user_id, body, exc, header=message.header)
        except (LatentFLError, ValueError, TypeError, KeyError) as exc:
            # A verified peer's message that our own code could not handle: refuse it and keep
            # serving (the traceback goes to the log, the reason to the peer and the journal).
            self.log.exception("message_failed", peer=pid, kind=message.header.kind.value)
            failure = ProtocolError("internal", f"the coordinator could not process this "
                                                f"message ({type(exc).__name__}).")
            self._refuse(sock, routing_id, user_id, body, failure, header=message.header)

    def _dispatch(self, sock: zmq.Socket, pid: str, message: Message) -> None:
        kind = message.header.kind
        if kind is Kind.HEARTBEAT:
            self.journal.append("accepted", kind="HEARTBEAT", peer=pid, durable=False)
            self._send(sock, pid, Kind.HEARTBEAT, round=self.rounds.round,
                       meta={"boot": self.boot_id, "phase": self.rounds.phase})
        elif kind is Kind.HELLO:
            self._on_hello(sock, pid, message)
        elif kind is Kind.UPDATE:
            self._on_update(sock, pid, message)
        elif kind is Kind.REJECT:
            self._on_decline(pid, message)
        elif kind is Kind.BYE:
            self.journal.append("accepted", kind="BYE", peer=pid)
            self.peers[pid].online = False
            self.log.info("participant_left", peer=pid)
        else:
            raise ProtocolError("unexpected-kind", f"a participant may not send {kind.value}.")

    def _on_hello(self, sock: zmq.Socket, pid: str, message: Message) -> None:
        summary = unpack_json(message.payload) if message.payload else {}
        examples = summary.get("num_examples")
        examples = examples if type(examples) is int else None
        self.peers[pid].summary = summary
        self.journal.append("accepted", kind="HELLO", peer=pid, examples=examples)
        self.log.info("hello", peer=pid, examples=examples)
        if self.rounds.phase == "finished":
            self._send(sock, pid, Kind.STATUS, round=self.rounds.round, meta={"phase": "finished"})
        elif self.rounds.phase == "collecting" and pid in self.rounds.pending():
            self._send_task(sock, pid)

    def _on_decline(self, pid: str, message: Message) -> None:
        """A participant refused its task (site policy, failed training): stop waiting for it."""
        meta = message.header.meta
        reason = str(meta.get("reason"))[:64]
        self.journal.append("declined", peer=pid, reason=reason,
                            detail=str(meta.get("detail"))[:500],
                            round=meta.get("refused_round"))
        self.log.warning("task_declined", peer=pid, reason=reason, round=meta.get("refused_round"))
        if (meta.get("refused_kind") == "TASK" and meta.get("refused_round") == self.rounds.round
                and pid in self.rounds.pending()):
            self.rounds.drop([pid])

    def _on_update(self, sock: zmq.Socket, pid: str, message: Message) -> None:
        header = message.header
        digest = header.payload_sha256
        started = time.perf_counter()
        if header.meta.get("aggregate") is True:
            self._on_aggregate(sock, pid, message)
            return
        encrypted = header.meta.get("encrypted") is True
        if encrypted != (self.secure is not None):
            raise ProtocolError("wrong-mode", f"UPDATE from {pid} is "
                                              f"{'encrypted' if encrypted else 'in the clear'}; "
                                              f"this session aggregates in "
                                              f"{self.config.aggregation.mode!r} mode.")
        if self.rounds.check_update(pid, header.round, digest):
            self.journal.append("accepted", kind="UPDATE", peer=pid, round=header.round,
                                sha256=digest, resent=True)
            self._send(sock, pid, Kind.ACK, round=header.round, meta={"sha256": digest})
            self.log.info("update_resent", round=header.round, peer=pid)
            return
        if self.secure is not None:
            update, ciphertexts = decode_encrypted_update(
                message, max_bytes=self.config.max_message_bytes)
            self.secure.check_upload(ciphertexts)  # 'bad_ciphertext' -> REJECT; never decrypted
        else:
            update = decode_update(message, self.manifest,
                                   max_bytes=self.config.max_message_bytes)
        self.rounds.accept(update, digest)  # fsynced before the ACK
        privacy = {k: header.meta[k] for k in PRIVACY_META if header.meta.get(k) is not None}
        self.journal.append("accepted", kind="UPDATE", peer=pid, round=header.round,
                            sha256=digest, bytes=len(message.payload),
                            examples=update.num_examples, encrypted=encrypted, privacy=privacy)
        self.peers[pid].accepted += 1
        self._send(sock, pid, Kind.ACK, round=header.round, meta={"sha256": digest})
        self.log.info("update_accepted", round=header.round, peer=pid, bytes=len(message.payload),
                      examples=update.num_examples,
                      ms=round(1000 * (time.perf_counter() - started), 1),
                      have=len(self.rounds.updates), planned=len(self.rounds.plan))

    def _on_aggregate(self, sock: zmq.Socket, pid: str, message: Message) -> None:
        """The designated participant's decrypted aggregate: hand it to the strategy."""
        header = message.header
        digest = header.payload_sha256
        if self.secure is None:
            raise ProtocolError("wrong-mode", "an aggregate was sent but this session does not "
                                              "use encrypted aggregation.")
        if self.secure.check_answer(pid, header.round, digest):
            self._send(sock, pid, Kind.ACK, round=header.round, meta={"sha256": digest})
            return
        aggregate = decode_update(message, self.manifest, max_bytes=self.config.max_message_bytes)
        if aggregate.num_examples != self.secure.total_weight:
            raise ProtocolError("malformed", f"aggregate covers {aggregate.num_examples} examples;"
                                             f" the sum sent covers {self.secure.total_weight}.")
        self.secure.finish(digest)
        self.journal.append("accepted", kind="AGGREGATE", peer=pid, round=header.round,
                            sha256=digest, covers=self.secure.cohort)
        self._send(sock, pid, Kind.ACK, round=header.round, meta={"sha256": digest})
        self.log.info("aggregate_decrypted", round=header.round, peer=pid)
        self._start_aggregation(aggregate)

    def _refuse(self, sock: zmq.Socket, routing_id: bytes, user_id: str | None,
                body: list, exc: ProtocolError, header: Any = None) -> None:
        header = header or peek_header(body)
        size = sum(len(f) for f in body)
        self.journal.append("refused", peer=user_id, reason=exc.reason, detail=str(exc)[:500],
                            kind=header.kind.value if header else None,
                            round=header.round if header else None, bytes=size)
        self.log.warning("message_refused", peer=user_id, reason=exc.reason, bytes=size,
                         detail=str(exc)[:200])
        if user_id in self.peers:
            self.peers[user_id].refused += 1
        if user_id is None:
            return
        meta = {"reason": exc.reason, "detail": str(exc)[:900],
                "refused_kind": header.kind.value if header else None,
                "refused_round": header.round if header else None}
        frames = encode(Kind.REJECT, session=self.config.session, round=self.rounds.round,
                        sender=COORDINATOR_ID, signing_key=self.identity.signing_key, meta=meta)
        sock.send_multipart([routing_id, *frames])

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
        self.verifier.update_keys(change.roster.verify_keys())
        for pid in change.revoked:
            self.peers.pop(pid, None)
        self.rounds.drop(change.revoked)
        active = change.roster.active_ids()
        self.journal.append("roster_reloaded", active=active, revoked=change.revoked)
        self.log.info("roster_reloaded", active=len(active), revoked=change.revoked)
        self._write_status(force=True)
        return bool(change.revoked)

    def _write_status(self, *, force: bool = False, stopped: bool = False) -> None:
        now = time.time()
        if not force and now < self._status_due:
            return
        self._status_due = now + 0.5
        write_json_atomic(self.store.status_path, status_snapshot(
            self.config, self.rounds, self.peers, endpoint=self.endpoint, now=now,
            stopped=stopped))

    def _broadcast_finished(self, sock: zmq.Socket) -> None:
        for pid, peer in self.peers.items():
            if peer.online:
                self._send(sock, pid, Kind.STATUS, round=self.rounds.round,
                           meta={"phase": "finished"})
        self.journal.append("finished", rounds=self.config.rounds)


__all__ = ["Coordinator", "Peer", "make_evaluator"]
