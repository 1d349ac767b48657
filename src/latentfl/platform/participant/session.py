"""The participant's decisions, without a socket: what to answer each coordinator message with,
and what time alone makes due.

:meth:`ParticipantSession.on_message` takes a verified message and returns the
:class:`~latentfl.platform.protocol.Outgoing` messages to send; :meth:`ParticipantSession.step`
does the same for what time decides (a finished training or audit, an unacknowledged upload
to send again, a heartbeat). The agent owns the socket and signs and sends what these return;
tests drive a session directly, message by message.

A TASK is decoded (the wire codec), checked against the site's own policy before any data is
touched (its approval, :mod:`~latentfl.platform.participant.task_policy`, then its privacy,
:class:`~latentfl.platform.participant.privacy.SitePrivacy`), then trained in a worker
thread (:func:`~latentfl.platform.participant.local_step.train_locally`); a task the site will
not do is answered with a DECLINE. The trained update is encoded as an UPDATE and sent again
(same payload, fresh envelope) until its ACK arrives, or a REJECT whose reason says a re-send
cannot succeed (``Reason.final``); the coordinator counts a re-send once.

In ``secagg`` and ckks mode the TASK also opens a
:class:`~latentfl.platform.participant.masked_round.MaskedRound` (keys are sent at once, training runs
meanwhile); the MASKED_UPDATE (ckks: ENCRYPTED_UPDATE) goes once training and the share inbox
are both in. In ckks mode the session may be asked to decrypt a cohort's encrypted sum of
masked words (DECRYPT_TASK): it returns the limb sums, masked noise to it. An operator's
AUDIT_REQUEST is run between rounds or declined as the site's ``[audit]`` policy says
(:class:`~latentfl.platform.participant.audits.requested.RequestedAudits`).

A REJECT whose reason is in ``ENDS_AGENT`` raises :class:`~latentfl.errors.RefusedError`: this
participant, as configured, can never take part.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any, NamedTuple

from latentfl.errors import LatentFLError, PrivacyError, ProtocolError, Reason, RefusedError
from latentfl.platform.crypto import COORDINATOR_ID
from latentfl.platform.participant.audits.requested import RequestedAudits
from latentfl.platform.participant.config import ParticipantConfig
from latentfl.platform.participant.connection import Enrolment
from latentfl.platform.participant.local_step import LocalData, Trained, train_locally
from latentfl.platform.participant.masked_round import (
    MaskedRound,
    site_floors,
    task_min_cohort,
)
from latentfl.platform.participant.privacy import SitePrivacy
from latentfl.platform.participant.record import SiteRecord
from latentfl.platform.participant.task_policy import check_task_policy
from latentfl.platform.participant.uploads import Pending
from latentfl.platform.participant.worker import run_in_daemon_thread
from latentfl.platform.protocol import (
    Ack,
    Decline,
    DeclineReason,
    Heartbeat,
    Kind,
    Message,
    Outgoing,
    Reject,
)
from latentfl.platform.wire.hello import encode_hello
from latentfl.platform.wire.payloads import (
    decode_decrypt_task,
    decode_task,
    encode_limb_sums,
    encode_update,
)
from latentfl.privacy import Aggregation, PolicyRule

ENDS_AGENT = frozenset({Reason.WRONG_SESSION, Reason.UNKNOWN_SENDER, Reason.SENDER_MISMATCH,
                        Reason.BAD_SIGNATURE, Reason.VERSION})
"""Refusals that say this agent, as configured, can never take part: it ends on them."""

Outbox = list[Outgoing]


class Training(NamedTuple):
    """The local training in progress: its round, whether its update waits for masks, and
    its outcome (a :class:`Trained` update)."""

    round: int
    masked: bool
    future: Future


class ParticipantSession:
    """One participant's state across connections: pending upload, rounds done, the masked
    round in progress, requested audits (see the module docstring)."""

    def __init__(self, config: ParticipantConfig, enrolment: Enrolment, data: LocalData,
                 log: Any, wake: Callable[[], None] | None = None) -> None:
        """``wake``: called from a training's or an audit's thread when it is done, so the
        agent's loop runs :meth:`step` at once."""
        self.config = config
        self.wake = wake
        self.enrolment = enrolment
        self.pid = enrolment.pid
        self.data = data
        self.log = log
        self.privacy = SitePrivacy(config.privacy, state_dir=config.state_dir,
                                   key_dir=config.key_dir)
        self.audits = RequestedAudits(config, data, log, wake)  # operators' audit requests
        self.record = SiteRecord(config.state_dir)  # the site's own hash-chained log
        self.pending: Pending | None = None
        self.done_round = 0  # the last round this site delivered (acked) or declined
        self.finished = False  # the coordinator said the session is over
        self._training: Training | None = None
        self._stop_work = threading.Event()  # set once: the agent is leaving
        self._masked: MaskedRound | None = None  # the secagg or ckks round in progress
        self._boot: str | None = None
        self._next_heartbeat = 0.0
        self._handlers: dict[Kind, Callable[[Message, float], Outbox]] = {
            Kind.HEARTBEAT: self._on_heartbeat, Kind.TASK: self._on_task,
            Kind.DECRYPT_TASK: self._on_decrypt, Kind.ACK: self._on_ack,
            Kind.REJECT: self._on_reject, Kind.STATUS: self._on_status,
            Kind.SECAGG_KEY_LIST: self._on_secagg, Kind.SECAGG_SHARE_INBOX: self._on_secagg,
            Kind.SECAGG_SURVIVORS: self._on_secagg, Kind.SECAGG_UNMASK: self._on_secagg,
            Kind.AUDIT_REQUEST: self._on_audit_request}

    # -- the agent's entry points ---------------------------------------------------------
    def connected(self, now: float) -> Outbox:
        """A new connection: HELLO with the data summary; heartbeats from now on."""
        self._next_heartbeat = now + self.config.heartbeat_interval
        return [self._hello()]

    def on_message(self, message: Message, now: float) -> Outbox:
        """Answer one verified coordinator message (RefusedError when it ends this agent); one
        whose control meta is malformed is logged and ignored."""
        handler = self._handlers.get(message.header.kind)  # SYNTHETIC: the audit client's
        try:
            return handler(message, now) if handler is not None else []
        except RefusedError:
            raise
        except ProtocolError as exc:
            self.log.warning("message_refused", kind=message.header.kind.value,
                             reason=exc.reason, detail=str(exc))
            return []

    @property
    def working(self) -> bool:
        """Whether a local training thread still runs."""
        return self._training is not None and not self._training.future.done()

    def halt_work(self) -> None:
        """Tell local training to stop at its next batch (thread-safe, returns at once): a
        stopping agent says so before it says BYE, so the two overlap."""
        self._stop_work.set()

    def stop_work(self, timeout: float) -> bool:
        """Stop local training between batches and wait up to ``timeout`` s for its thread;
        True when none runs any more (what it trained is dropped, never sent)."""
        self.halt_work()
        if self._training is None:
            return True
        done, _ = wait([self._training.future], timeout)
        self.log.info("training_stopped", round=self._training.round, joined=bool(done),
                      summary=f"local training of round {self._training.round} stopped; "
                      "nothing of it is sent")
        return bool(done)

    def step(self, now: float) -> Outbox:
        """What time makes due: a finished training or audit, a re-send, a heartbeat."""
        out = self._after_training(now)
        for kind, payload, meta in self.audits.step(training=self._training is not None):
            self.record.note("audit_answered", kind=kind.value, request=meta.get("request"),
                             sha256=hashlib.sha256(payload).hexdigest())
            out.append(self._to_coordinator(kind, self.done_round, payload, meta))
        if self.pending and now - self.pending.sent_at > self.config.ack_timeout:
            out.append(self._send_pending(now))
        if now >= self._next_heartbeat:
            out.append(self._to_coordinator(Kind.HEARTBEAT, self.done_round))
            self._next_heartbeat = now + self.config.heartbeat_interval
        return out

    def next_deadline(self) -> float:
        """When :meth:`step` next has something due with time alone: the next heartbeat, or
        the re-send of an unacknowledged upload (a finished training wakes the agent)."""
        times = [self._next_heartbeat]
        if self.pending:
            times.append(self.pending.sent_at + self.config.ack_timeout + 1e-3)
        return min(times)

    def leaving(self, round: int | None = None) -> Outgoing:
        """The BYE that says this site leaves (``round``: the one it is told about)."""
        return self._to_coordinator(Kind.BYE, self.done_round if round is None else round)

    # -- control messages -----------------------------------------------------------------
    def _on_heartbeat(self, message: Message, now: float) -> Outbox:
        boot = Heartbeat.from_meta(message.header.meta).boot
        restarted = self._boot is not None and boot != self._boot
        self._boot = boot
        if restarted:
            self.log.info("coordinator_restarted")
            return [self._hello()]
        return []

    def _on_ack(self, message: Message, now: float) -> Outbox:
        p, ack = self.pending, Ack.from_meta(message.header.meta)
        if ack.request is not None:  # an audit's answer arrived (see audits/requested.py)
            self.log.info("audit_answer_acknowledged", request=ack.request)
        elif p and message.header.round == p.round and ack.acknowledges(p.digest):
            self.log.info("update_acknowledged", round=p.round, attempts=p.attempts,
                          summary=f"round {p.round}: the coordinator acknowledged this site's "
                                  f"{p.kind.value} (sha256 {p.digest[:12]})")
            self.record.note("acknowledged", kind=p.kind.value, round=p.round, sha256=p.digest)
            if self._masked is not None and self._masked.round == p.round:
                self._masked.acknowledged(p.kind)  # the survivor set may now be signed
            self.done_round = max(self.done_round, p.round)
            self.pending = None
        return []

    def _on_reject(self, message: Message, now: float) -> Outbox:
        """A refusal of our pending upload that re-sending cannot cure drops it."""
        reject = Reject.from_meta(message.header.meta)
        self.log.warning("refused_by_coordinator", reason=reject.reason, detail=reject.detail,
                         summary=f"the coordinator refused this site's message "
                                 f"({reject.reason}): {reject.detail[:160]}")
        if reject.reason in ENDS_AGENT:
            raise RefusedError(reject.reason, f"the coordinator refuses this participant for "
                                              f"good ({reject.reason}: {reject.detail[:300]}).")
        p = self.pending
        if p and reject.reason.final and reject.refuses(p.kind, p.round):
            self.pending = None
        return []

    def _on_status(self, message: Message, now: float) -> Outbox:
        if message.header.meta.get("phase") == "finished" and self.config.exit_when_finished:
            self.finished = True
            return [self.leaving(message.header.round)]
        return []

    def _on_audit_request(self, message: Message, now: float) -> Outbox:
        """An operator's audit request: declined, queued or answered (audits/requested.py)."""
        return [self._to_coordinator(kind, self.done_round, payload, meta)
                for kind, payload, meta in self.audits.receive(message)]

    # -- tasks ----------------------------------------------------------------------------
    def _on_task(self, message: Message, now: float) -> Outbox:
        r = message.header.round
        masked, out = self._masked, []
        if masked is not None and masked.round == r:
            try:
                renewed = masked.renewed_by(message, self.config.session)
            except ProtocolError as exc:
                self.log.warning("task_refused", round=r, reason=exc.reason, detail=str(exc))
                return []
            if renewed:  # the round was planned again under a fresh attempt
                return self._renew_masked(message)
            if not masked.shared:  # the same TASK again (we reconnected): our keys again
                out.append(self._masked_reply(masked.keys()))
        if self.pending and self.pending.round == r:
            return [*out, self._send_pending(now)]  # the coordinator lost our upload
        if r <= self.done_round or (self._training and self._training.round == r):
            return out
        return out + self._accept_task(message)

    def _accept_task(self, message: Message) -> Outbox:
        """Decode a new round's TASK, check it against the site's policy, start training."""
        r = message.header.round
        try:
            task, spec = decode_task(message, max_bytes=self.config.max_message_bytes)
        except ProtocolError as exc:
            self.log.warning("task_refused", round=r, reason=exc.reason, detail=str(exc))
            return [self._decline(r, exc.reason, str(exc))]
        digest = str(message.header.meta.get("manifest"))  # decode_task checked it
        method = task.method or "method not stated"
        self.log.info("task_received", round=r, bytes=len(message.payload),
                      epochs=task.train.epochs, lr=task.train.lr, method=task.method,
                      aggregation=task.aggregation.value,
                      summary=f"round {r}: task received ({method}, {spec.name}, "
                              f"{task.train.epochs} epoch(s), lr {task.train.lr}, "
                              f"{task.aggregation.value})")
        # its "accepted" or "declined" follows at once and fsyncs it: one fsync per TASK
        self.record.note("task", round=r, method=task.method, model=spec.name,
                         manifest=digest, aggregation=task.aggregation.value,
                         epochs=task.train.epochs, lr=task.train.lr,
                         batch_size=task.train.batch_size, durable=False)
        try:  # the site's approval and its privacy policy, before any data is touched
            check_task_policy(self.config.policy.tasks, task, spec, digest)
            sigma = self.privacy.check(task, len(self.data.y),
                                       min_cohort=task_min_cohort(message, self.config.session))
        except PrivacyError as exc:
            self.log.warning("task_refused_by_policy", round=r, rule=exc.rule, detail=str(exc),
                             summary=f"round {r}: task declined by this site's policy "
                                     f"({exc.rule})")
            return [self._decline(r, PolicyRule(exc.rule), str(exc))]
        except LatentFLError as exc:  # ledger or plan unreadable, bad DP settings
            self.log.error("privacy_check_failed", round=r, error=str(exc))
            return [self._decline(r, Reason.PRIVACY_CHECK_FAILED, str(exc))]
        ckks = None
        if task.aggregation is Aggregation.CKKS:
            try:  # before training: nothing is spent on an update that could not be sent
                ckks = self.privacy.ckks  # unseals the secret context once
            except LatentFLError as exc:
                self.log.error("ckks_unavailable", round=r, error=str(exc))
                return [self._decline(r, Reason.CKKS_UNAVAILABLE, str(exc))]
        out = []
        if task.aggregation in (Aggregation.SECAGG, Aggregation.CKKS):
            try:
                self._masked = self._open_masked(message, ckks)
            except LatentFLError as exc:
                self.log.warning("task_refused", round=r, reason=Reason.MALFORMED,
                                 detail=str(exc))
                return [self._decline(r, Reason.MALFORMED, str(exc))]
            out.append(self._masked_reply(self._masked.keys()))
        self.record.note("accepted", round=r, noise_multiplier=sigma)
        self.log.info("training_started", round=r, noise_multiplier=sigma,
                      summary=f"round {r}: task accepted; training on {len(self.data.y)} "
                              "local examples" + ("" if sigma is None
                                                  else f" with DP-SGD (noise {sigma:.3f})"))
        self._training = Training(r, task.aggregation is not Aggregation.PLAIN, run_in_daemon_thread(
            lambda: train_locally(task, spec, sigma, data=self.data, privacy=self.privacy,
                                  config=self.config, pid=self.pid, log=self.log,
                                  stop=self._stop_work),
            name=f"train-{r}", on_done=self.wake))
        return out

    def _after_training(self, now: float) -> Outbox:
        """A finished training becomes the pending UPDATE (or waits for its masks); a failed
        one a DECLINE."""
        if self._training is None or not self._training.future.done():
            return []
        r, masked, future = self._training
        self._training = None
        try:
            trained: Trained = future.result()
        except Exception as exc:  # noqa: BLE001 - a failed task must not stop the agent
            self.log.error("training_failed", round=r, error=f"{type(exc).__name__}: {exc}")
            return [self._decline(r, Reason.TRAINING_FAILED, f"{type(exc).__name__}: {exc}")]
        if masked:  # the update waits for its masks (dropped if the round went away)
            if self._masked is not None and self._masked.round == r:
                self._masked.trained = trained
                return self._send_masked(now)
            self.log.warning("update_dropped", round=r,
                             summary=f"round {r} went away (abandoned or aborted) before this "
                                     "site's masked update could be sent; it is dropped")
            self.record.note("dropped", round=r, reason="round went away before the upload")
            return []
        payload, meta = encode_update(trained.update, trained.report)
        self.pending = Pending(Kind.UPDATE, r, payload, meta)
        return [self._send_pending(now)]

    def _on_decrypt(self, message: Message, now: float) -> Outbox:
        """Decrypt the coordinator's encrypted sum of masked words and return its limb sums,
        signed: only for the attempt in progress, only after this site signed its survivor set
        and received the certificate, for exactly the certified cohort, once
        (:meth:`MaskedRound.decrypt`). Every limb is one-time-pad masked, so this site learns
        nothing from it (not even the aggregate); no refusal names a decrypted value."""
        r, masked = message.header.round, self._masked
        try:
            job = decode_decrypt_task(message, max_bytes=self.config.max_message_bytes)
            if masked is None or not masked.matches(message) or masked.ckks is None:
                raise PrivacyError(PolicyRule.SECAGG_NOT_SIGNED, "the decrypt task names no "
                                   "ckks attempt this site signed survivors for.")
            sums = masked.decrypt(job.ciphertexts, job.length, job.cohort)
        except PrivacyError as exc:
            self.log.warning("decrypt_refused", round=r, rule=exc.rule, detail=str(exc))
            return [self._to_coordinator(Kind.DECLINE, r,
                                         meta=Decline(PolicyRule(exc.rule), str(exc)).meta())]
        except (LatentFLError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, ProtocolError) else Reason.DECRYPT_FAILED
            self.log.warning("decrypt_refused", round=r, reason=reason, detail=str(exc))
            return [self._to_coordinator(Kind.DECLINE, r, meta=Decline(reason, str(exc)).meta())]
        payload, meta = encode_limb_sums(sums, cohort=job.cohort)
        self.log.info("limb_sums_decrypted", round=r, covers=job.cohort)
        self.pending = Pending(Kind.AGGREGATE, r, payload, meta | {"attempt": job.attempt})
        return [self._send_pending(now)]

    # -- secagg and ckks rounds -----------------------------------------------------------
    def _on_secagg(self, message: Message, now: float) -> Outbox:
        """Answer the coordinator's step of the secagg exchange (see masked_round.py)."""
        masked, kind, r = self._masked, message.header.kind, message.header.round
        if masked is None or not masked.matches(message):
            self.log.warning("secagg_ignored", kind=kind.value, round=r)
            return []
        try:
            if kind is Kind.SECAGG_KEY_LIST:
                return [self._masked_reply(masked.on_key_list(message))]
            if kind is Kind.SECAGG_SHARE_INBOX:
                masked.on_inbox(message)
                return self._send_masked(now)
            if kind is Kind.SECAGG_SURVIVORS:
                signature = self._masked_reply(masked.on_survivors(message))
                self.log.info("secagg_signed_survivors", round=r)
                return [signature]
            reveal = self._masked_reply(masked.on_unmask(message))
            self.log.info("secagg_revealed", round=r)
            return [reveal]
        except PrivacyError as exc:  # a holder's rule: reveal nothing, say why
            self.log.warning("secagg_refused", round=r, kind=kind.value, rule=exc.rule,
                             attempt=masked.attempt, detail=str(exc))
            return [self._to_coordinator(Kind.DECLINE, r,
                                         meta=Decline(PolicyRule(exc.rule), str(exc)).meta())]
        except LatentFLError as exc:
            self.log.warning("secagg_failed", round=r, kind=kind.value, detail=str(exc))
            return []

    def _open_masked(self, message: Message, ckks: Any) -> MaskedRound:
        return MaskedRound(message, pid=self.pid, session=self.config.session,
                           signing_key=self.enrolment.identity.signing_key,
                           verify_keys=self.enrolment.roster.verify_keys(), ckks=ckks,
                           floors=site_floors(self.privacy.config.policy))

    def _send_masked(self, now: float) -> Outbox:
        """The masked upload, once training and the share inbox are both in."""
        masked = self._masked
        reply = None if masked is None else masked.masked_update()
        if masked is None or reply is None:
            return []
        kind, payload, meta = reply
        self.pending = Pending(kind, masked.round, payload, meta)
        return [self._send_pending(now)]

    def _renew_masked(self, message: Message) -> Outbox:
        """A secagg round planned again: join the new attempt with the same training, unless
        this site already uploaded a masked update for the round."""
        old, r = self._masked, message.header.round
        assert old is not None
        if old.uploaded:
            return [self._decline(r, PolicyRule.SECAGG_ALREADY_UPLOADED,
                                  f"{self.pid} already uploaded a masked update for round {r}; "
                                  "a second sum over an overlapping cohort would reveal the "
                                  "difference.")]
        try:
            self._masked = self._open_masked(message, old.ckks)
        except LatentFLError as exc:
            return [self._decline(r, Reason.MALFORMED, str(exc))]
        self._masked.trained = old.trained
        self.log.info("secagg_renewed", round=r, attempt=self._masked.attempt)
        return [self._masked_reply(self._masked.keys())]

    # -- what goes out --------------------------------------------------------------------
    def _hello(self) -> Outgoing:
        summary = self.data.summary(self.config.share_class_counts)
        payload = encode_hello(summary, max_epsilon=self.config.privacy.policy.max_epsilon)
        return self._to_coordinator(Kind.HELLO, 0, payload)

    def _masked_reply(self, reply: tuple[Kind, bytes, dict]) -> Outgoing:
        assert self._masked is not None
        return self._to_coordinator(reply[0], self._masked.round, reply[1], reply[2])

    def _decline(self, round: int, reason: DeclineReason, detail: str) -> Outgoing:
        """This site will not deliver round ``round`` (a DECLINE)."""
        self.done_round = max(self.done_round, round)
        self.record.note("declined", round=round, reason=str(reason), detail=detail[:500])
        return self._to_coordinator(Kind.DECLINE, round, meta=Decline(reason, detail).meta())

    def _send_pending(self, now: float) -> Outgoing:
        p = self.pending
        assert p is not None
        p.attempts += 1
        p.sent_at = now
        if p.attempts == 1:  # a re-send carries the same payload
            self.record.note("sent", kind=p.kind.value, round=p.round, sha256=p.digest,
                             bytes=len(p.payload), epsilon=p.meta.get("epsilon"))
        self.log.info("update_sent", round=p.round, bytes=len(p.payload), attempt=p.attempts,
                      sha256=p.digest,
                      summary=f"round {p.round}: sent {p.kind.value} ({len(p.payload)} bytes, "
                              f"sha256 {p.digest[:12]})"
                              + (f", attempt {p.attempts}" if p.attempts > 1 else ""))
        # the digest Pending computed for the ACK goes into the header: hashed once per upload
        return Outgoing(COORDINATOR_ID, p.kind, p.round, p.payload, p.meta,
                        payload_sha256=p.digest)

    @staticmethod
    def _to_coordinator(kind: Kind, round: int, payload: bytes = b"",
                        meta: dict | None = None) -> Outgoing:
        return Outgoing(COORDINATOR_ID, kind, round, payload, meta or {})


__all__ = ["ENDS_AGENT", "ParticipantSession"]
