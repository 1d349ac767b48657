"""The coordinator's ROUTER socket: a CURVE server, bound, that signs what it sends.

It decides nothing: the daemon's loop receives from it and gives it messages to send. Every
message leaves signed with the coordinator's Ed25519 key in an envelope of this session.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from latentfl.errors import AddressInUseError, ConfigError
from latentfl.platform.crypto import COORDINATOR_ID, Identity, make_curve_server
from latentfl.platform.protocol import Kind, encode

# libzmq drops (without telling us) a connection sending a frame over MAXMSGSIZE; the slack
# lets moderately oversized messages through to a journaled REJECT.
ZMQ_SIZE_SLACK = 2**20


class Router:
    """One bound ROUTER (see the module docstring); :meth:`rebind` replaces it."""

    def __init__(self, identity: Identity, *, session: str, max_message_bytes: int) -> None:
        self.identity = identity
        self.session = session
        self.max_message_bytes = max_message_bytes
        self.socket: zmq.Socket | None = None
        self.endpoint = ""
        #: Observers of every message sent with ``observe=True``: ``fn(pid, frames)``.
        self.observers: list[Callable[[str, list[bytes]], None]] = []

    def open(self, ctx: zmq.Context, endpoint: str) -> zmq.Socket:
        """Bind a CURVE-server ROUTER to ``endpoint`` (retrying while an old one lets go)."""
        sock = ctx.socket(zmq.ROUTER)
        make_curve_server(sock, self.identity)
        sock.maxmsgsize = self.max_message_bytes + ZMQ_SIZE_SLACK
        for attempt in range(50):
            try:
                sock.bind(endpoint)
                break
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EADDRINUSE and attempt < 49:
                    time.sleep(0.1)
                    continue
                sock.close(linger=0)
                if exc.errno == zmq.EADDRINUSE:
                    raise AddressInUseError(
                        f"bind address {endpoint} is in use by another process; stop it or "
                        "set another bind in the coordinator's config.") from None
                raise ConfigError(f"bind address {endpoint} cannot be bound ({exc.strerror}); "
                                  "expected tcp://HOST:PORT of this host.") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.socket = sock
        return sock

    def rebind(self) -> zmq.Socket:
        """Drop every connection: close the socket and bind a new one to the same endpoint.

        A ROUTER cannot close one peer's connection, so after a revocation the socket is
        replaced; participants' DEALERs reconnect on their own and re-run the CURVE handshake
        against the updated allow-list.
        """
        ctx = self.socket.context
        self.socket.close(linger=0)
        return self.open(ctx, self.endpoint)

    def send(self, routing_id: bytes, kind: Kind, *, round: int, payload: bytes = b"",
             meta: Mapping[str, Any] | None = None, peer: str | None = None) -> None:
        """Sign and send one message; observers see it when ``peer`` names the participant."""
        frames = encode(kind, session=self.session, round=round, sender=COORDINATOR_ID,
                        signing_key=self.identity.signing_key, payload=payload, meta=meta)
        if peer is not None:
            for observe in self.observers:
                observe(peer, frames)
        self.send_frames(routing_id, frames)

    def send_frames(self, routing_id: bytes, frames: Sequence[bytes]) -> None:
        """Send already signed frames (the audit service's answers) to ``routing_id``."""
        self.socket.send_multipart([routing_id, *frames])

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=2000)


__all__ = ["Router"]
