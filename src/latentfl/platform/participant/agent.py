"""The participant agent: a DEALER (CURVE client pinned to the coordinator's key) next to the data.

The main thread owns the socket: HELLO on every (re)connection, heartbeats, ACK bookkeeping.
Local training runs in one worker thread, so heartbeats continue while it trains. An UPDATE is
re-sent (same payload, fresh envelope) until its ACK arrives, or until a REJECT whose reason
says a re-send cannot succeed (``Reason.final``); the coordinator counts a re-send once (it keys
updates by participant, round and payload hash). A task the site will not do (its policy, a
failed check or training) is answered with a DECLINE. Messages are dispatched from a table by
kind. When the coordinator is silent
for ``coordinator_timeout`` the agent drops the socket and reconnects with exponential backoff.
It never executes anything received: a TASK is weights (safetensors), a registry model name and
training settings, all checked before use.

In ``secagg`` and ``ckks`` mode a TASK also opens a
:class:`~latentfl.platform.participant.secagg.MaskedRound` (keys are sent at once, training runs
meanwhile); its exchanges are answered from the same table, and the MASKED_UPDATE (ckks: the
ENCRYPTED_UPDATE of the masked words) is sent, then re-sent like any update, once training and
the share inbox are both in. In ckks mode the agent may also be asked to decrypt the encrypted
sum of a cohort's masked words (DECRYPT_TASK): it returns the limb sums, masked noise to it.

An operator's AUDIT_REQUEST is run (between rounds, in its own thread) or declined as the
site's ``[audit]`` policy says, and answered with aggregate numbers only
(:class:`~latentfl.platform.participant.requested_audit.RequestedAudits`).

The agent ends, with one sentence, when it can never take part: the coordinator's ZAP handler
refuses its CURVE key (seen through the socket monitor; NotEnrolledError, exit 7), the
coordinator runs another session, or it refuses this agent for a reason in ``ENDS_AGENT``
(RefusedError, exit 8). A stop (SIGTERM, SIGINT) takes effect within seconds whatever the agent
is doing: every send is bounded (``connection.SEND_TIMEOUT_MS``), the socket's linger is
bounded, and training runs in a daemon thread that does not hold the process open.

Length: this module is over 400 lines because it is the one loop that owns the socket, with a
short handler per kind a participant receives; the work behind each handler (training, CKKS,
secagg, the site's privacy, audits an operator requested) lives in its own module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import random
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import zmq

from latentfl.data import load_dataset, to_tensors
from latentfl.device import resolve_device
from latentfl.errors import (
    LatentFLError,
    NotEnrolledError,
    PrivacyError,
    ProtocolError,
    Reason,
    RefusedError,
)
from latentfl.exitcodes import ExitCode
from latentfl.log import get_logger
from latentfl.models import model_manifest
from latentfl.platform.crypto import COORDINATOR_ID, curve_fingerprint
from latentfl.platform.participant.config import ParticipantConfig
from latentfl.platform.participant.connection import HandshakeWatch, connect, load_enrolment
from latentfl.platform.participant.privacy import SitePrivacy
from latentfl.platform.participant.requested_audit import RequestedAudits
from latentfl.platform.participant.secagg import (
    MaskedRound,
    Trained,
    site_floors,
    task_min_cohort,
)
from latentfl.platform.participant.worker import run_in_daemon_thread
from latentfl.platform.payloads import (
    decode_decrypt_task,
    decode_task,
    encode_limb_sums,
    encode_update,
)
from latentfl.platform.protocol import (
    DEFAULT_CLOCK_SKEW_S,
    Kind,
    Message,
    ReplayGuard,
    Verifier,
    encode,
    pack_json,
)
from latentfl.strategies import Aggregation, ModelSpec, Task, run_task

POLL_MS = 100
ENDS_AGENT = frozenset({Reason.WRONG_SESSION, Reason.UNKNOWN_SENDER, Reason.SENDER_MISMATCH,
                        Reason.BAD_SIGNATURE, Reason.VERSION})
"""Refusals that say this agent, as configured, can never take part: it ends on them."""


@dataclass
class LocalData:
    """This site's training tensors and the summary HELLO may carry."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def summary(self, share_class_counts: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"num_examples": len(self.y)}
        if share_class_counts:
            out["class_counts"] = np.bincount(self.y.numpy(), minlength=self.num_classes).tolist()
        return out


def load_local_data(config: ParticipantConfig) -> LocalData:
    """The site's training split, or its part of a deterministic partition (demos, tests)."""
    ds = load_dataset(config.data)
    train = ds.train if config.partition is None else config.partition.take(ds.train)
    x, y = to_tensors(train, ds.mean, ds.std)
    return LocalData(x, y, ds.num_classes)


@dataclass
class Pending:
    """An update (UPDATE, MASKED_UPDATE, ENCRYPTED_UPDATE or AGGREGATE) sent and not yet
    acknowledged."""

    kind: Kind
    round: int
    payload: bytes
    meta: dict
    digest: str
    sent_at: float = 0.0
    attempts: int = 0


class Agent:
    """One participant's agent; :meth:`run` serves until the session finishes or a stop."""

    def __init__(self, config: ParticipantConfig, *, data: LocalData | None = None) -> None:
        self.config = config
        self.enrolment = load_enrolment(config)
        self.identity = self.enrolment.identity
        self.pid = self.enrolment.pid
        roster = self.enrolment.roster
        replay_path = None
        if config.state_dir is not None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            replay_path = config.state_dir / "replay.log"
        self.replay = ReplayGuard(replay_path, window_s=DEFAULT_CLOCK_SKEW_S)
        self.verifier = Verifier.of_coordinator(roster, session=config.session,
                                                replay=self.replay,
                                                max_bytes=config.max_message_bytes)
        self.log = get_logger("participant", peer=self.pid, session=config.session)
        self.data = data if data is not None else load_local_data(config)
        self.privacy = SitePrivacy(config.privacy, state_dir=config.state_dir,
                                   key_dir=config.key_dir)
        self._stop = threading.Event()
        self._training: tuple[int, Future] | None = None
        self.pending: Pending | None = None
        self.done_round = 0  # the last round this agent delivered (acked) or declined
        self._boot: str | None = None
        self._masked: MaskedRound | None = None  # the secagg round in progress
        self.audits = RequestedAudits(config, self.data, self.log)  # operators' audit requests
        self._handlers = {Kind.HEARTBEAT: self._on_heartbeat, Kind.TASK: self._on_task,
                          Kind.DECRYPT_TASK: self._on_decrypt, Kind.ACK: self._on_ack,
                          Kind.REJECT: self._on_reject, Kind.STATUS: self._on_status,
                          Kind.SECAGG_KEY_LIST: self._on_secagg,
                          Kind.SECAGG_SHARE_INBOX: self._on_secagg,
                          Kind.SECAGG_SURVIVORS: self._on_secagg,
                          Kind.SECAGG_UNMASK: self._on_secagg,
                          Kind.AUDIT_REQUEST: self._on_audit_request}

    def stop(self) -> None:
        """Ask the agent to leave (thread-safe)."""
        self._stop.set()

    # -- lifecycle ------------------------------------------------------------------------
    def run(self, *, handle_signals: bool = True) -> int:
        """Connect, serve, reconnect with backoff; 0 when the session finished, 130 on stop.

        NotEnrolledError / RefusedError when the coordinator refuses this agent for good.
        """
        if handle_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
        ctx = zmq.Context()
        backoff = 0.5
        self.log.info("participant_started", coordinator=self.config.coordinator,
                      examples=len(self.data.y))
        try:
            while not self._stop.is_set():
                sock = connect(ctx, self.config, self.enrolment)
                watch = HandshakeWatch(sock)
                try:
                    outcome, heard = self._session(sock, watch)
                except LatentFLError as exc:
                    self.log.error("participant_refused", detail=str(exc))
                    raise
                finally:
                    watch.close()
                    sock.close(linger=500)  # lets a last BYE out, bounded
                if outcome == "finished":
                    self.log.info("session_finished", done_round=self.done_round)
                    return int(ExitCode.OK)
                if outcome == "stopped":
                    break
                backoff = 0.5 if heard else min(2 * backoff, self.config.max_backoff)
                wait = backoff * (0.5 + random.random() / 2)
                self.log.warning("coordinator_silent", reconnect_in_s=round(wait, 2))
                self._stop.wait(wait)
            self.log.info("participant_stopped")
            return int(ExitCode.INTERRUPTED)
        finally:
            self.replay.close()
            ctx.term()

    # -- one connection -------------------------------------------------------------------
    def _send(self, sock: zmq.Socket, kind: Kind, *, round: int, payload: bytes = b"",
              meta: dict | None = None) -> None:
        """Send one message; if no connection takes it within the send timeout it is dropped
        (an UPDATE is re-sent until acked, everything else is repeated anyway)."""
        frames = encode(kind, session=self.config.session, round=round, sender=self.pid,
                        signing_key=self.identity.signing_key, payload=payload, meta=meta)
        try:
            sock.send_multipart(frames)
        except zmq.Again:
            self.log.warning("send_timed_out", kind=kind.value, round=round)

    def _hello(self, sock: zmq.Socket) -> None:
        summary = self.data.summary(self.config.share_class_counts)
        self._send(sock, Kind.HELLO, round=0, payload=pack_json(summary))

    def _session(self, sock: zmq.Socket,
                 watch: HandshakeWatch) -> tuple[Literal["finished", "stopped", "silent"], bool]:
        self._hello(sock)
        now = time.time()
        last_heard, heard = now, False
        next_heartbeat = now + self.config.heartbeat_interval
        while not self._stop.is_set():
            if watch.refused():
                raise NotEnrolledError(
                    f"the coordinator at {self.config.coordinator} refuses this participant's "
                    f"CURVE key (id {self.pid!r}, fingerprint "
                    f"{curve_fingerprint(self.identity.curve_public)}): it is revoked or not "
                    "enrolled; ask the operator to enrol it.")
            if sock.poll(POLL_MS, zmq.POLLIN):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        message = self.verifier.verify(frames, user_id=COORDINATOR_ID)
                    except ProtocolError as exc:
                        if exc.reason == Reason.WRONG_SESSION:  # checked after the signature
                            raise RefusedError(exc.reason, (
                                f"the coordinator at {self.config.coordinator} runs another "
                                f"session ({exc}); set session in this participant's config "
                                "to the consortium's.")) from None
                        self.log.warning("message_refused", reason=exc.reason, detail=str(exc))
                        continue
                    last_heard, heard = time.time(), True
                    if self._on_message(sock, message) == "finished":
                        self._send(sock, Kind.BYE, round=message.header.round)
                        return "finished", True
            now = time.time()
            self._after_training(sock, now)
            for reply in self.audits.step(training=self._training is not None):
                self._send(sock, reply[0], round=self.done_round, payload=reply[1], meta=reply[2])
            if self.pending and now - self.pending.sent_at > self.config.ack_timeout:
                self._send_update(sock)
            if now >= next_heartbeat:
                self._send(sock, Kind.HEARTBEAT, round=self.done_round)
                next_heartbeat = now + self.config.heartbeat_interval
            if now - last_heard > self.config.coordinator_timeout:
                return "silent", heard
        with contextlib.suppress(zmq.ZMQError):
            self._send(sock, Kind.BYE, round=self.done_round)
        return "stopped", heard

    def _on_message(self, sock: zmq.Socket, message: Message) -> str:
        """Dispatch a verified message by kind; "finished" when the session is over."""
        handler = self._handlers.get(message.header.kind)  # SYNTHETIC: the audit client's
        return (handler(sock, message) or "") if handler is not None else ""

    def _on_heartbeat(self, sock: zmq.Socket, message: Message) -> None:
        boot = message.header.meta.get("boot")
        if self._boot is not None and boot != self._boot:
            self.log.info("coordinator_restarted")
            self._hello(sock)
        self._boot = boot if isinstance(boot, str) else None

    def _on_ack(self, sock: zmq.Socket, message: Message) -> None:
        p, header = self.pending, message.header
        if "request" in header.meta:  # an audit's answer arrived (see requested_audit)
            self.log.info("audit_answer_acknowledged", request=header.meta["request"])
            return
        if p and header.round == p.round and header.meta.get("sha256") == p.digest:
            self.log.info("update_acknowledged", round=p.round, attempts=p.attempts)
            if self._masked is not None and self._masked.round == p.round:
                self._masked.acknowledged(p.kind)  # the survivor set may now be signed
            self.done_round = max(self.done_round, p.round)
            self.pending = None

    def _on_reject(self, sock: zmq.Socket, message: Message) -> None:
        """A refusal of our pending update that re-sending cannot cure drops it."""
        meta = message.header.meta
        reason = Reason.parse(meta.get("reason"))
        self.log.warning("refused_by_coordinator", reason=meta.get("reason"),
                         detail=meta.get("detail"))
        if reason in ENDS_AGENT:
            raise RefusedError(reason, f"the coordinator refuses this participant for good "
                                       f"({reason}: {str(meta.get('detail'))[:300]}).")
        p = self.pending
        if (p and reason is not None and reason.final and meta.get("refused_kind") == p.kind.value
                and meta.get("refused_round") == p.round):
            self.pending = None

    def _on_status(self, sock: zmq.Socket, message: Message) -> str | None:
        if message.header.meta.get("phase") == "finished" and self.config.exit_when_finished:
            return "finished"
        return None

    def _on_audit_request(self, sock: zmq.Socket, message: Message) -> None:
        """An operator's audit request: declined, queued or answered (requested_audit.py)."""
        for kind, payload, meta in self.audits.receive(message):
            self._send(sock, kind, round=self.done_round, payload=payload, meta=meta)

    # -- tasks ----------------------------------------------------------------------------
    def _on_task(self, sock: zmq.Socket, message: Message) -> None:
        r = message.header.round
        masked = self._masked
        if masked is not None and masked.round == r:
            try:
                renewed = masked.renewed_by(message, self.config.session)
            except ProtocolError as exc:
                self.log.warning("task_refused", round=r, reason=exc.reason, detail=str(exc))
                return
            if renewed:  # the round was planned again under a fresh attempt
                self._renew_masked(sock, message)
                return
            if not masked.shared:  # the same TASK again (we reconnected): our keys again
                self._reply(sock, masked.keys())
        if self.pending and self.pending.round == r:
            self._send_update(sock)  # the coordinator lost our update: send it again
            return
        if r <= self.done_round or (self._training and self._training[0] == r):
            return
        try:
            task, spec = decode_task(message, max_bytes=self.config.max_message_bytes)
        except ProtocolError as exc:
            self.log.warning("task_refused", round=r, reason=exc.reason, detail=str(exc))
            self._decline(sock, r, exc.reason, str(exc))
            return
        self.log.info("task_received", round=r, bytes=len(message.payload),
                      epochs=task.train.epochs, lr=task.train.lr,
                      aggregation=task.aggregation.value)
        try:  # the site's own policy, before any data is touched
            sigma = self.privacy.check(task, len(self.data.y),
                                       min_cohort=task_min_cohort(message, self.config.session))
        except PrivacyError as exc:
            self.log.warning("task_refused_by_policy", round=r, rule=exc.rule, detail=str(exc))
            self._decline(sock, r, exc.rule, str(exc))
            return
        except LatentFLError as exc:  # ledger or plan unreadable, bad DP settings
            self.log.error("privacy_check_failed", round=r, error=str(exc))
            self._decline(sock, r, Reason.PRIVACY_CHECK_FAILED, str(exc))
            return
        if task.aggregation is Aggregation.CKKS:
            try:  # before training: nothing is spent on an update that could not be sent
                self.privacy.ckks  # noqa: B018 - unseals the secret context once
            except LatentFLError as exc:
                self.log.error("ckks_unavailable", round=r, error=str(exc))
                self._decline(sock, r, Reason.CKKS_UNAVAILABLE, str(exc))
                return
        if task.aggregation in (Aggregation.SECAGG, Aggregation.CKKS):
            ckks = self.privacy.ckks if task.aggregation is Aggregation.CKKS else None
            try:
                self._masked = MaskedRound(message, pid=self.pid, session=self.config.session,
                                           signing_key=self.identity.signing_key,
                                           verify_keys=self.enrolment.roster.verify_keys(),
                                           ckks=ckks,
                                           floors=site_floors(self.privacy.config.policy))
            except LatentFLError as exc:
                self.log.warning("task_refused", round=r, reason=Reason.MALFORMED,
                                 detail=str(exc))
                self._decline(sock, r, Reason.MALFORMED, str(exc))
                return
            self._reply(sock, self._masked.keys())
        self._training = (r, run_in_daemon_thread(lambda: self._train(task, spec, sigma),
                                                  name=f"train-{r}"))

    def _train(self, task: Task, spec: ModelSpec,
               sigma: float | None) -> tuple[Kind, bytes, dict] | Trained:
        """Train (DP-SGD when configured), then encode the UPDATE (in secagg and ckks mode
        the update waits for its masks)."""
        started = time.perf_counter()
        with self.privacy.training_wrap(task.round, sigma) as wrap:
            update = run_task(task, spec, self.data.x, self.data.y, participant=self.pid,
                              device=resolve_device(self.config.device), wrap=wrap,
                              share_class_counts=self.config.share_class_counts)
        manifest = model_manifest(spec.build())
        update = dataclasses.replace(update, weights=self.privacy.noise_weights(
            task.round, task.weights, update.weights, manifest))
        report = self.privacy.report()  # the ledger is saved when the wrap closes
        self.log.info("trained", round=task.round, steps=update.num_steps,
                      examples=update.num_examples, seconds=round(time.perf_counter() - started, 2),
                      epsilon=None if report is None else report["epsilon"],
                      train_loss=update.metrics.get("train_loss"))
        if task.aggregation in (Aggregation.SECAGG, Aggregation.CKKS):
            return Trained(update, manifest, report)
        return (Kind.UPDATE, *encode_update(update, report))

    def _on_decrypt(self, sock: zmq.Socket, message: Message) -> None:
        """Decrypt the coordinator's encrypted sum of masked words and return its limb sums,
        signed: only for the attempt in progress, only after this site signed its survivor set
        and received the certificate, for exactly the certified cohort, once
        (:meth:`MaskedRound.decrypt`). Every limb is one-time-pad masked, so this site learns
        nothing from it (not even the aggregate); no refusal names a decrypted value."""
        r, masked = message.header.round, self._masked
        try:
            job = decode_decrypt_task(message, max_bytes=self.config.max_message_bytes)
            if masked is None or not masked.matches(message) or masked.ckks is None:
                raise PrivacyError("secagg_not_signed", "the decrypt task names no ckks attempt "
                                                        "this site signed survivors for.")
            sums = masked.decrypt(job.ciphertexts, job.length, job.cohort)
        except PrivacyError as exc:
            self.log.warning("decrypt_refused", round=r, rule=exc.rule, detail=str(exc))
            self._send(sock, Kind.DECLINE, round=r, meta={"reason": exc.rule,
                                                          "detail": str(exc)[:900]})
            return
        except (LatentFLError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, ProtocolError) else Reason.DECRYPT_FAILED
            self.log.warning("decrypt_refused", round=r, reason=reason, detail=str(exc))
            self._send(sock, Kind.DECLINE, round=r,
                       meta={"reason": reason, "detail": str(exc)[:900]})
            return
        payload, meta = encode_limb_sums(sums, cohort=job.cohort)
        self.log.info("limb_sums_decrypted", round=r, covers=job.cohort)
        self.pending = Pending(Kind.AGGREGATE, r, payload, meta | {"attempt": job.attempt},
                               hashlib.sha256(payload).hexdigest())
        self._send_update(sock)

    def _after_training(self, sock: zmq.Socket, now: float) -> None:
        if self._training is None or not self._training[1].done():
            return
        r, future = self._training
        self._training = None
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - a failed task must not stop the agent
            self.log.error("training_failed", round=r, error=f"{type(exc).__name__}: {exc}")
            self._decline(sock, r, Reason.TRAINING_FAILED, f"{type(exc).__name__}: {exc}")
            return
        if isinstance(result, Trained):
            if self._masked is not None and self._masked.round == r:
                self._masked.trained = result
                self._send_masked(sock)
            return
        kind, payload, meta = result
        self.pending = Pending(kind, r, payload, meta, hashlib.sha256(payload).hexdigest())
        self._send_update(sock)

    # -- secagg ---------------------------------------------------------------------------
    def _on_secagg(self, sock: zmq.Socket, message: Message) -> None:
        """Answer the coordinator's step of the secagg exchange (see participant/secagg.py)."""
        masked, kind, r = self._masked, message.header.kind, message.header.round
        if masked is None or not masked.matches(message):
            self.log.warning("secagg_ignored", kind=kind.value, round=r)
            return
        try:
            if kind is Kind.SECAGG_KEY_LIST:
                self._reply(sock, masked.on_key_list(message))
            elif kind is Kind.SECAGG_SHARE_INBOX:
                masked.on_inbox(message)
                self._send_masked(sock)
            elif kind is Kind.SECAGG_SURVIVORS:
                self._reply(sock, masked.on_survivors(message))
                self.log.info("secagg_signed_survivors", round=r)
            else:
                self._reply(sock, masked.on_unmask(message))
                self.log.info("secagg_revealed", round=r)
        except PrivacyError as exc:  # a holder's rule: reveal nothing, say why
            self.log.warning("secagg_refused", round=r, kind=kind.value, rule=exc.rule,
                             attempt=masked.attempt, detail=str(exc))
            self._send(sock, Kind.DECLINE, round=r, meta={"reason": exc.rule,
                                                          "detail": str(exc)[:900]})
        except LatentFLError as exc:
            self.log.warning("secagg_failed", round=r, kind=kind.value, detail=str(exc))

    def _send_masked(self, sock: zmq.Socket) -> None:
        """Send the masked update once training and the share inbox are both in."""
        masked = self._masked
        reply = None if masked is None else masked.masked_update()
        if masked is None or reply is None:
            return
        kind, payload, meta = reply
        self.pending = Pending(kind, masked.round, payload, meta,
                               hashlib.sha256(payload).hexdigest())
        self._send_update(sock)

    def _renew_masked(self, sock: zmq.Socket, message: Message) -> None:
        """A secagg round planned again: join the new attempt with the same training, unless
        this site already uploaded a masked update for the round."""
        old, r = self._masked, message.header.round
        assert old is not None
        if old.uploaded:
            self._decline(sock, r, "secagg_already_uploaded",
                          f"{self.pid} already uploaded a masked update for round {r}; a second "
                          "sum over an overlapping cohort would reveal the difference.")
            return
        try:
            self._masked = MaskedRound(message, pid=self.pid, session=self.config.session,
                                       signing_key=self.identity.signing_key,
                                       verify_keys=self.enrolment.roster.verify_keys(),
                                       ckks=old.ckks, floors=old.floors)
        except LatentFLError as exc:
            self._decline(sock, r, Reason.MALFORMED, str(exc))
            return
        self._masked.trained = old.trained
        self.log.info("secagg_renewed", round=r, attempt=self._masked.attempt)
        self._reply(sock, self._masked.keys())

    def _reply(self, sock: zmq.Socket, reply: tuple[Kind, bytes, dict]) -> None:
        assert self._masked is not None
        kind, payload, meta = reply
        self._send(sock, kind, round=self._masked.round, payload=payload, meta=meta)

    def _decline(self, sock: zmq.Socket, round: int, reason: str, detail: str) -> None:
        """Tell the coordinator this site will not deliver round ``round`` (a DECLINE);
        ``reason`` is a :class:`Reason` or the name of the site-policy rule that refused."""
        self._send(sock, Kind.DECLINE, round=round, meta={"reason": reason, "detail": detail[:900]})
        self.done_round = max(self.done_round, round)

    def _send_update(self, sock: zmq.Socket) -> None:
        p = self.pending
        if p is None:
            return
        p.attempts += 1
        p.sent_at = time.time()
        self._send(sock, p.kind, round=p.round, payload=p.payload, meta=p.meta)
        self.log.info("update_sent", round=p.round, bytes=len(p.payload), attempt=p.attempts)


__all__ = ["Agent", "LocalData", "load_local_data"]
