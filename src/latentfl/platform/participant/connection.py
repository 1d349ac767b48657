"""A participant's keys, checked against the roster, and its CURVE connection to the coordinator.

The agent and the one-shot audit client both connect as the same participant; this is the one
place that decides whether the keys in a folder may do so and how the socket is set up.
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq

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
    sock.connect(config.coordinator)
    return sock


__all__ = ["Enrolment", "connect", "load_enrolment"]
