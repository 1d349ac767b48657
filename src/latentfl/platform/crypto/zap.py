"""ZAP authentication fed by the roster: only enrolled, active CURVE keys may connect.

Participants' and operators' keys are both allowed; the User-Id names the party, and the
coordinator's verifier decides what each role may send.

A CURVE server socket without a ZAP handler accepts every client key, so the coordinator starts
this authenticator before binding. It answers each handshake from the current roster snapshot
and sets the connection's ZAP ``User-Id`` to the participant id, which the daemon reads with
``frame.get("User-Id")`` (never the ROUTER routing id, which the client chooses).

Each refused handshake is queued as a :class:`ZapRefusal` (the key's fingerprint and, if the
key was ever enrolled, the participant's id) for the daemon to log and journal from its own
thread (:meth:`RosterAuthenticator.refusals`).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from latentfl.errors import SecurityError
from latentfl.platform.crypto.keys import Identity, curve_fingerprint
from latentfl.platform.crypto.roster import Roster

# A User-Id no participant can have (ids start with a letter or digit): fails every sender check.
_NO_USER = "!unauthenticated"
_MAX_QUEUED_REFUSALS = 4096


@dataclass(frozen=True)
class ZapRefusal:
    """A refused CURVE handshake: the client key's fingerprint and the id it was once enrolled
    under (None for a key no roster of this daemon ever held)."""

    fingerprint: str
    participant: str | None


class RosterAuthenticator(ThreadAuthenticator):
    """A ZAP handler in a thread whose CURVE allow-list is the roster's active parties."""

    def __init__(self, context: zmq.Context, roster: Roster, log: Any = None) -> None:
        super().__init__(context=context, log=log or logging.getLogger("latentfl.zap"))
        self._ids_by_key: dict[bytes, str] = {}
        self._granted: dict[bytes, str] = {}
        self._ever_enrolled: dict[bytes, str] = {}
        # appended by the ZAP thread, drained by the daemon's; deque appends and pops are atomic
        self._refused: deque[ZapRefusal] = deque(maxlen=_MAX_QUEUED_REFUSALS)
        self.update_roster(roster)
        self.configure_curve_callback("*", credentials_provider=self)

    def update_roster(self, roster: Roster) -> None:
        """Swap in a new allow-list; later handshakes see it (established connections stay)."""
        # One reference assignment: the ZAP thread sees the old or the new map, never a mix.
        self._ids_by_key = {
            entry.curve_public: entry.id for entry in roster.entries() if entry.active
        }
        self._ever_enrolled = {
            **self._ever_enrolled,
            **{entry.curve_public: entry.id for entry in roster.participants.values()},
        }

    def allowed_ids(self) -> list[str]:
        """Ids whose CURVE keys are currently accepted."""
        return sorted(self._ids_by_key.values())

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: ``key`` is the client's Z85 public key."""
        pid = self._ids_by_key.get(bytes(key))
        if pid is None:
            self._refused.append(
                ZapRefusal(curve_fingerprint(key), self._ever_enrolled.get(bytes(key)))
            )
            return False
        # curve_user_id runs next, in this thread, for this same request: hand it the id that
        # was granted here, so a roster swap in between cannot change the answer.
        self._granted = {bytes(key): pid}
        return True

    def refusals(self) -> list[ZapRefusal]:
        """The handshakes refused since the last call (oldest first)."""
        out = []
        while self._refused:
            out.append(self._refused.popleft())
        return out

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The User-Id libzmq attaches to this peer's messages: its participant or operator
        id."""
        return self._granted.pop(z85.encode(client_public_key), _NO_USER)

    def configure_curve(self, domain: str = "*", location: Any = ".") -> None:
        """Refused: the roster is the only source of allowed keys (never "allow any key")."""
        raise SecurityError(
            f"configure_curve({location!r}) is refused; the allow-list comes from the roster only"
        )


def start_authenticator(context: zmq.Context, roster: Roster) -> RosterAuthenticator:
    """Start a roster-fed ZAP handler on ``context``; call before binding any CURVE server."""
    auth = RosterAuthenticator(context, roster)
    auth.start()
    if not auth.is_alive() or auth.allow_any:
        auth.stop()
        raise SecurityError("the ZAP authenticator failed to start; refusing to serve without one")
    return auth


def peer_user_id(frame: zmq.Frame) -> str | None:
    """The ZAP User-Id of a received frame (``recv(copy=False)``), or None when there is none."""
    try:
        user_id = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return user_id or None


def make_curve_server(socket: zmq.Socket, identity: Identity) -> None:
    """Make ``socket`` a CURVE server with ``identity``'s keys (set before bind)."""
    socket.curve_secretkey = identity.curve_secret
    socket.curve_publickey = identity.curve_public
    socket.curve_server = True


def make_curve_client(socket: zmq.Socket, identity: Identity, server_public: bytes) -> None:
    """Make ``socket`` a CURVE client pinned to ``server_public`` (set before connect)."""
    socket.curve_secretkey = identity.curve_secret
    socket.curve_publickey = identity.curve_public
    socket.curve_serverkey = server_public


__all__ = [
    "RosterAuthenticator",
    "ZapRefusal",
    "make_curve_client",
    "make_curve_server",
    "peer_user_id",
    "start_authenticator",
]
