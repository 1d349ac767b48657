"""A participant's keys, checked against the roster, and its CURVE connection to the coordinator.

The agent and the one-shot audit client both connect as the same participant; this is the one
place that decides whether the keys in a folder may do so and how the socket is set up. Sends
are bounded (``SEND_TIMEOUT_MS``: a DEALER whose CURVE handshake never completes would block a
send forever) and :class:`HandshakeWatch` reads the socket's monitor, so an agent learns that the
coordinator refused its key instead of waiting on a connection that cannot be made.
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

from latentfl.errors import SecurityError
from latentfl.platform.crypto import (
    COORDINATOR_ID,
    Identity,
    Roster,
    load_identity,
    load_roster,
    make_curve_client,
)
from latentfl.platform.participant.config import ParticipantConfig


@dataclass(frozen=True)
class Enrolment:
    """This participant's identity and the roster that enrols it."""

    identity: Identity
    roster: Roster

    @property
    def pid(self) -> str:
        return self.identity.id


def load_enrolment(config: ParticipantConfig) -> Enrolment:
    """The keys in ``config.key_dir``, refused unless the roster enrols exactly them."""
    identity = load_identity(config.key_dir)
    if identity.id == COORDINATOR_ID:
        raise SecurityError(f"key folder {config.key_dir} holds the coordinator's keys; "
                            "expected a participant's key folder.")
    roster = load_roster(config.roster)
    entry = roster.participants.get(identity.id)
    if entry is None or entry.curve_public != identity.curve_public:
        raise SecurityError(f"participant {identity.id!r} with the keys in {config.key_dir} is "
                            f"not enrolled in roster {config.roster}.")
    return Enrolment(identity, roster)


def connect(ctx: zmq.Context, config: ParticipantConfig, enrolment: Enrolment) -> zmq.Socket:
    """A DEALER speaking CURVE with these keys to the pinned coordinator key."""
    sock = ctx.socket(zmq.DEALER)
    make_curve_client(sock, enrolment.identity, enrolment.roster.coordinator_curve_public)
    sock.maxmsgsize = config.max_message_bytes
    sock.linger = 0
    sock.sndtimeo = SEND_TIMEOUT_MS
    sock.connect(config.coordinator)
    return sock


SEND_TIMEOUT_MS = 1000
class HandshakeWatch:
    """Tells whether the coordinator refused the CURVE handshake of ``sock``: its ZAP handler
    answers a revoked or unknown key with an authentication failure (ZAP status 400), after
    which libzmq does not retry, so the agent would otherwise wait forever."""

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        self.monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)

    def refused(self) -> bool:
        """True once a refusal arrived (reads the events queued so far)."""
        refused = False
        while self.monitor.poll(0):
            refused |= recv_monitor_message(self.monitor)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        return refused

    def close(self) -> None:
        self._sock.disable_monitor()
        self.monitor.close(linger=0)


__all__ = ["SEND_TIMEOUT_MS", "Enrolment", "HandshakeWatch", "connect", "load_enrolment"]
