"""``latentfl admin``: an operator steering a running coordinator from any host.

The operator's keys (a key folder made by ``latentfl keys``, enrolled in the roster's
``[[operators]]``) open a CURVE connection pinned to the coordinator's key from the roster;
each command is one signed admin message answered by a signed ``ADMIN_RESULT`` (checked with the
coordinator's signing key from the same roster) or a REJECT. See ``coordinator/admin.py`` for
what each command does on the coordinator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from latentfl.config import option
from latentfl.errors import ConfigError, ProtocolError, Reason, SecurityError
from latentfl.platform.crypto import Identity, load_identity, load_roster, make_curve_client
from latentfl.platform.exchange import OneShotClient, exchange
from latentfl.platform.protocol import (
    DEFAULT_CLOCK_SKEW_S,
    TO_OPERATOR,
    Kind,
    ReplayGuard,
    Verifier,
    encode,
    unpack_json,
)
from latentfl.platform.wire.audit_request import encode_command, option_problems


@dataclass(frozen=True)
class AdminConfig:
    """How an operator reaches a coordinator (``latentfl admin ACTION --config FILE``)."""

    session: str = option(help="The session id of the coordinator to steer (its config's "
                               "`session`).")
    coordinator: str = option(help="The coordinator's endpoint, tcp://HOST:PORT.")
    roster: Path = option(help="A copy of the consortium roster: it enrols this operator and "
                               "pins the coordinator's CURVE and signing keys.")
    key_dir: Path = option(help="This operator's key folder (made by `latentfl keys init "
                                "--operators ID`, `keys add DIR ID --operator` or `keys create`).")
    timeout_s: float = option(30.0, help="Seconds to wait for the coordinator's answer.",
                              min=0.0, min_exclusive=True)
    max_message_bytes: int = option(64 * 2**20, help="Largest answer accepted (bytes).",
                                    min=1024)

    def problems(self) -> list[str]:
        if not self.coordinator.startswith(("tcp://", "ipc://")):
            return [f"coordinator = {self.coordinator!r}; expected tcp://HOST:PORT or "
                    "ipc://PATH."]
        return []


class AdminClient(OneShotClient):
    """One connection to the coordinator with an operator's keys (a context manager)."""

    def __init__(self, config: AdminConfig) -> None:
        self.config = config
        self.identity: Identity = load_identity(config.key_dir)
        roster = load_roster(config.roster)
        entry = roster.operators.get(self.identity.id)
        if entry is None or not entry.active or entry.curve_public != self.identity.curve_public:
            raise SecurityError(f"the keys in {config.key_dir} ({self.identity.id!r}) are not "
                                f"an active operator of roster {config.roster}; enrol them with "
                                "`latentfl keys add DIR ID --operator`.")
        self.verifier = Verifier.of_coordinator(
            roster, accepts=TO_OPERATOR, session=config.session,
            replay=ReplayGuard(window_s=DEFAULT_CLOCK_SKEW_S), max_bytes=config.max_message_bytes)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.maxmsgsize = config.max_message_bytes
        make_curve_client(self.sock, self.identity, roster.coordinator_curve_public)
        self.sock.connect(config.coordinator)

    def command(self, kind: Kind, *, round: int = 0, meta: dict[str, Any] | None = None,
                payload: bytes = b"") -> dict[str, Any]:
        """Send one signed admin command; its result (ProtocolError when refused)."""
        frames = encode(kind, session=self.config.session, round=round, sender=self.identity.id,
                        signing_key=self.identity.signing_key, meta=meta, payload=payload)
        reply = exchange(self.sock, frames, kind=kind, reply=Kind.ADMIN_RESULT,
                         verifier=self.verifier, timeout_s=self.config.timeout_s,
                         endpoint=self.config.coordinator)
        return unpack_json(reply.payload, max_bytes=self.config.max_message_bytes)

    def status(self) -> dict[str, Any]:
        """The coordinator's status: ``latentfl status --json``'s dict plus the admin state."""
        return self.command(Kind.ADMIN_STATUS)["status"]

    def pause(self) -> dict[str, Any]:
        return self.command(Kind.ADMIN_PAUSE)

    def resume(self) -> dict[str, Any]:
        return self.command(Kind.ADMIN_RESUME)

    def abort_round(self, round: int | None = None) -> dict[str, Any]:
        """Skip round ``round`` (default: the one in progress, as status reports it); refused
        unless that round is still collecting."""
        if round is None:
            current = self.status().get("round_in_progress") or {}
            if current.get("phase") != "collecting":
                raise ProtocolError(Reason.BAD_COMMAND, f"no round is collecting (round "
                                                        f"{current.get('round')} is "
                                                        f"{current.get('phase')}); nothing to "
                                                        "abort.")
            round = int(current["round"])
        return self.command(Kind.ADMIN_ABORT_ROUND, round=round)

    def remove(self, participant: str) -> dict[str, Any]:
        return self.command(Kind.ADMIN_REMOVE, meta={"participant": participant})

    def readmit(self, participant: str) -> dict[str, Any]:
        return self.command(Kind.ADMIN_READMIT, meta={"participant": participant})

    def request_audit(self, participant: str, audit: str,
                      options: dict[str, int | float]) -> dict[str, Any]:
        """Ask ``participant`` to run ``audit`` on its own data and share the aggregates; the
        recorded request (its ``id`` and ``state``). ConfigError for options out of bounds."""
        problems = option_problems(audit, options)
        if problems:
            raise ConfigError("request-audit: " + "; ".join(problems) + ".")
        return self.command(Kind.ADMIN_REQUEST_AUDIT, meta={"participant": participant},
                            payload=encode_command(audit, options))["request"]

    def journal(self, tail: int) -> list[dict[str, Any]]:
        """The last ``tail`` journal entries, oldest first."""
        return self.command(Kind.ADMIN_JOURNAL, meta={"tail": tail})["entries"]


__all__ = ["AdminClient", "AdminConfig"]
