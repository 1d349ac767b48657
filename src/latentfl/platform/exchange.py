"""One signed request and its verified answer over a DEALER: what the one-shot clients beside
the daemons (``participant audit``, ``admin``) share.

The answer is the first verified message of the expected kind; a REJECT of the request's kind
raises the coordinator's reason. Other verified messages on the connection are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Self

import zmq

from latentfl.errors import ProtocolError, Reason
from latentfl.platform.crypto import COORDINATOR_ID
from latentfl.platform.protocol import Kind, Message, Reject, Verifier


def exchange(sock: zmq.Socket, frames: Sequence[bytes], *, kind: Kind, reply: Kind,
             verifier: Verifier, timeout_s: float, endpoint: str, hint: str = "") -> Message:
    """Send ``frames`` (a signed ``kind`` message); return the coordinator's verified ``reply``.

    ProtocolError with the coordinator's reason when it refuses, 'timeout' when no answer comes
    within ``timeout_s`` (``hint`` is added to that sentence).
    """
    sock.send_multipart(list(frames))
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if not sock.poll(int(left * 1000)):
            break
        message = verifier.verify(sock.recv_multipart(), user_id=COORDINATOR_ID)
        if message.header.kind is Kind.REJECT:
            reject = Reject.from_meta(message.header.meta)
            if reject.refused_kind is kind:
                raise ProtocolError(reject.reason, f"the coordinator refused {kind.value}: "
                                                   f"{reject.detail}")
        if message.header.kind is reply:
            return message
    raise ProtocolError(Reason.TIMEOUT, f"no answer to {kind.value} from {endpoint} within "
                                        f"{timeout_s:.0f}s; is the coordinator running{hint}?")


class OneShotClient:
    """The lifetime the one-shot clients share: their DEALER ``sock`` and its ``ctx`` (set by
    the subclass), closed when the ``with`` block ends."""

    ctx: zmq.Context
    sock: zmq.Socket

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


__all__ = ["OneShotClient", "exchange"]
