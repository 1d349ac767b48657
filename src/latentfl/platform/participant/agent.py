"""The participant agent: a DEALER (CURVE client pinned to the coordinator's key) next to the data.

It only carries messages. One thread owns the socket and the loop, which reads as: receive,
verify, hand to the session, send. The decisions (tasks, the site's policy, uploads and their
ACKs, secagg and ckks rounds, requested audits) live in the socket-free
:class:`~latentfl.platform.participant.session.ParticipantSession`, whose answers
(:class:`~latentfl.platform.protocol.Outgoing`) the agent signs and sends. Local training and
requested audits run in worker threads, so heartbeats continue while they work. When the
coordinator is silent for ``coordinator_timeout`` the agent drops the socket and reconnects
with exponential backoff; the session, and so a pending upload, lives on across connections.
It never executes anything received: a TASK is weights (safetensors), a registry model name and
training settings, all checked before use.

The agent ends, with one sentence, when it can never take part: the coordinator's ZAP handler
refuses its CURVE key (seen through the socket monitor; NotEnrolledError, exit 7), the
coordinator runs another session, or it refuses this agent for a reason in
``session.ENDS_AGENT`` (RefusedError, exit 8). A stop (SIGTERM, SIGINT) ends the agent within
2 s whatever it is doing: every send is bounded (``connection.SEND_TIMEOUT_MS``, the BYE's
shorter), the socket's linger is bounded, and local training is told at once, stops inside its
current batch (``worker``) and is joined before the agent returns (a process torn down under a
running torch thread dies in native code).
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from typing import Literal

import zmq

from latentfl.errors import LatentFLError, NotEnrolledError, ProtocolError, Reason, RefusedError
from latentfl.exitcodes import ExitCode
from latentfl.log import get_logger
from latentfl.platform.crypto import COORDINATOR_ID, curve_fingerprint
from latentfl.platform.participant.config import ParticipantConfig
from latentfl.platform.participant.connection import HandshakeWatch, connect, load_enrolment
from latentfl.platform.participant.local_step import LocalData, load_local_data
from latentfl.platform.participant.session import ParticipantSession
from latentfl.platform.protocol import (
    DEFAULT_CLOCK_SKEW_S,
    Message,
    Outgoing,
    ReplayGuard,
    Verifier,
    encode,
)
from latentfl.platform.wakeup import Wakeup, timeout_ms

# A stop must end the process within 2 s: the BYE and the socket's close get a fraction of
# that, overlapping the batch that local training finishes meanwhile (told at the stop).
STOP_JOIN_S = 1.5  # a batch ends well within this
BYE_TIMEOUT_MS = 200
LEAVE_LINGER_MS = 200
Outcome = Literal["finished", "stopped", "silent"]


class Agent:
    """One participant's agent; :meth:`run` serves until the session finishes or a stop."""

    def __init__(self, config: ParticipantConfig, *, data: LocalData | None = None) -> None:
        self.config = config
        self.enrolment = load_enrolment(config)
        self.identity = self.enrolment.identity
        self.pid = self.enrolment.pid
        replay_path = None
        if config.state_dir is not None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            replay_path = config.state_dir / "replay.log"
        self.replay = ReplayGuard(replay_path, window_s=DEFAULT_CLOCK_SKEW_S)
        self.verifier = Verifier.of_coordinator(self.enrolment.roster, session=config.session,
                                                replay=self.replay,
                                                max_bytes=config.max_message_bytes)
        self.log = get_logger("participant", peer=self.pid, session=config.session)
        self.data = data if data is not None else load_local_data(config)
        # wakes the loop from other threads: a training or audit done, a stop
        self._wakeup = Wakeup()
        self.session = ParticipantSession(config, self.enrolment, self.data, self.log,
                                          wake=self._wakeup.set)
        self._stop = threading.Event()

    @property
    def done_round(self) -> int:
        """The last round this agent delivered (acked) or declined."""
        return self.session.done_round

    def stop(self) -> None:
        """Ask the agent to leave (thread-safe; a signal handler calls it)."""
        self._stop.set()
        self.session.halt_work()
        self._wakeup.set()

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
                      examples=len(self.data.y),
                      summary=f"{self.pid} started with {len(self.data.y)} local examples; "
                              f"connecting to {self.config.coordinator}")
        try:
            while not self._stop.is_set():
                sock = connect(ctx, self.config, self.enrolment)
                watch = HandshakeWatch(sock)
                try:
                    outcome, heard = self._serve(sock, watch)
                except LatentFLError as exc:
                    self.log.error("participant_refused", detail=str(exc))
                    raise
                finally:
                    watch.close()
                    sock.close(linger=LEAVE_LINGER_MS)  # lets a last BYE out, bounded
                if outcome == "finished":
                    self.log.info("session_finished", done_round=self.done_round,
                                  summary="the coordinator finished the session; exiting")
                    return int(ExitCode.OK)
                if outcome == "stopped":
                    break
                backoff = 0.5 if heard else min(2 * backoff, self.config.max_backoff)
                wait = backoff * (0.5 + random.random() / 2)
                self.log.warning("coordinator_silent", reconnect_in_s=round(wait, 2))
                self._stop.wait(wait)
            self.log.info("participant_stopped", summary="stopped; state saved")
            return int(ExitCode.INTERRUPTED)
        finally:
            # Never leave while a training thread is inside torch: the interpreter's teardown
            # under it ends the process in native code instead of with its exit code.
            self.session.stop_work(timeout=STOP_JOIN_S)
            self.session.record.close()
            self.replay.close()
            ctx.term()
            self._wakeup.close()

    # -- one connection: receive, verify, hand to the session, send -----------------------
    def _serve(self, sock: zmq.Socket, watch: HandshakeWatch) -> tuple[Outcome, bool]:
        now = time.time()
        self._send_all(sock, self.session.connected(now))
        last_heard, heard = now, False
        poller = zmq.Poller()
        for pollable in (sock, watch.monitor, self._wakeup):
            poller.register(pollable, zmq.POLLIN)
        while not self._stop.is_set():
            # no tick: sleep until a message, a refusal, finished work or the next deadline
            timeout = timeout_ms(now, [self.session.next_deadline(),
                                       last_heard + self.config.coordinator_timeout + 1e-3])
            events = dict(poller.poll(timeout))
            self._wakeup.clear()
            if watch.refused():
                raise NotEnrolledError(
                    f"the coordinator at {self.config.coordinator} refuses this participant's "
                    f"CURVE key (id {self.pid!r}, fingerprint "
                    f"{curve_fingerprint(self.identity.curve_public)}): it is revoked or not "
                    "enrolled; ask the operator to enrol it.")
            if sock in events:
                while (message := self._receive(sock)) is not False:
                    if message is None:
                        continue
                    if not heard:
                        self.log.info("connected", coordinator=self.config.coordinator,
                                      summary=f"connected to {self.config.coordinator} "
                                              "(CURVE handshake done, coordinator verified)")
                    last_heard, heard = time.time(), True
                    if self._on_message(sock, message) == "finished":
                        return "finished", True
            now = time.time()
            self._send_all(sock, self.session.step(now))
            if now - last_heard > self.config.coordinator_timeout:
                return "silent", heard
        if heard:  # a BYE to a coordinator never reached has nowhere to go
            sock.sndtimeo = BYE_TIMEOUT_MS
            with contextlib.suppress(zmq.ZMQError):
                self._send_all(sock, [self.session.leaving()])
        return "stopped", heard

    def _receive(self, sock: zmq.Socket) -> Message | None | Literal[False]:
        """The next verified message; None for a refused one, False when none is queued."""
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return False
        try:
            return self.verifier.verify(frames, user_id=COORDINATOR_ID)
        except ProtocolError as exc:
            if exc.reason == Reason.WRONG_SESSION:  # checked after the signature
                raise RefusedError(exc.reason, (
                    f"the coordinator at {self.config.coordinator} runs another session "
                    f"({exc}); set session in this participant's config to the "
                    "consortium's.")) from None
            self.log.warning("message_refused", reason=exc.reason, detail=str(exc))
            return None

    def _on_message(self, sock: zmq.Socket, message: Message) -> str:
        """Send the session's answers to ``message``; "finished" when the session is over."""
        self._send_all(sock, self.session.on_message(message, time.time()))
        return "finished" if self.session.finished else ""

    def _send_all(self, sock: zmq.Socket, outbox: list[Outgoing]) -> None:
        """Sign and send each message; one no connection takes within the send timeout is
        dropped (an upload is re-sent until acked, everything else is repeated anyway)."""
        for out in outbox:
            frames = encode(out.kind, session=self.config.session, round=out.round,
                            sender=self.pid, signing_key=self.identity.signing_key,
                            payload=out.payload, meta=out.meta,
                            payload_sha256=out.payload_sha256)
            try:
                sock.send_multipart(frames)
            except zmq.Again:
                self.log.warning("send_timed_out", kind=out.kind.value, round=out.round)


__all__ = ["Agent"]
