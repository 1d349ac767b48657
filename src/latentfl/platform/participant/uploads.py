"""An upload the participant sent and keeps sending until the coordinator acknowledges it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from latentfl.platform.protocol import Kind


@dataclass
class Pending:
    """An upload (UPDATE, MASKED_UPDATE, ENCRYPTED_UPDATE or AGGREGATE) sent and not yet
    acknowledged; its ACK names ``digest``, the payload's SHA-256."""

    kind: Kind
    round: int
    payload: bytes
    meta: dict
    digest: str = field(init=False)
    sent_at: float = 0.0
    attempts: int = 0

    def __post_init__(self) -> None:
        self.digest = hashlib.sha256(self.payload).hexdigest()


__all__ = ["Pending"]
