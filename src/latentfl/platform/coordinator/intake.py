"""Taking in a participant's update: checked, persisted, journaled, then acknowledged.

An UPDATE (plain mode) or ENCRYPTED_UPDATE (ckks mode) is refused unless it fits the session's
mode, the round in progress and the participant's task (``Rounds.check_update``); its payload is
checked against the model manifest, or its ciphertexts against the public CKKS context (never
decrypted). It is on disk (fsynced) and in the journal, with the privacy fields its signed header
reports, before it counts and before the ACK is returned; if its journal line cannot be written
the file is removed and the update refused, never half-accepted. A re-send of an accepted update is acked again, counted
once. Socket-free, like the rounds: the daemon sends the outbox it returns.
"""

from __future__ import annotations

import time

from latentfl.errors import ProtocolError, Reason
from latentfl.log import get_logger
from latentfl.models import ModelManifest
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.coordinator.rounds import Rounds
from latentfl.platform.coordinator.secure import SecureAggregation
from latentfl.platform.payloads import PRIVACY_META, decode_encrypted_update, decode_update
from latentfl.platform.protocol import Kind, Message, Outgoing


class UpdateIntake:
    """Accepts one session's updates into its :class:`Rounds` (see the module docstring)."""

    def __init__(self, config: CoordinatorConfig, rounds: Rounds, journal: Journal,
                 manifest: ModelManifest, secure: SecureAggregation | None) -> None:
        self.mode = config.aggregation.mode
        self.max_bytes = config.max_message_bytes
        self.rounds = rounds
        self.journal = journal
        self.manifest = manifest
        self.secure = secure
        self.log = get_logger("coordinator", session=config.session)

    def receive(self, message: Message) -> tuple[list[Outgoing], bool]:
        """The ACK of a verified update, and whether it was newly accepted (False: a re-send);
        ProtocolError to refuse it."""
        header, pid = message.header, message.header.sender
        digest, started = header.payload_sha256, time.perf_counter()
        encrypted = header.kind is Kind.ENCRYPTED_UPDATE
        if encrypted != (self.secure is not None):
            raise ProtocolError(Reason.WRONG_MODE, f"{header.kind.value} from {pid} refused: "
                                                   f"this session aggregates in {self.mode!r} "
                                                   "mode.")
        ack = [Outgoing(pid, Kind.ACK, header.round, meta={"sha256": digest})]
        if self.rounds.check_update(pid, header.round, digest):
            self.journal.append("accepted", kind=header.kind.value, peer=pid, round=header.round,
                                sha256=digest, resent=True)
            self.log.info("update_resent", round=header.round, peer=pid)
            return ack, False
        if self.secure is not None:
            update, ciphertexts = decode_encrypted_update(message, max_bytes=self.max_bytes)
            self.secure.check_upload(ciphertexts)  # 'bad-ciphertext' -> REJECT; never decrypted
        else:
            update = decode_update(message, self.manifest, max_bytes=self.max_bytes)
        privacy = {k: header.meta[k] for k in PRIVACY_META if header.meta.get(k) is not None}
        # file fsynced, then its journal line fsynced, then counted; the ACK after all three
        self.rounds.accept(update, digest, lambda: self.journal.append(
            "accepted", kind=header.kind.value, peer=pid, round=header.round, sha256=digest,
            bytes=len(message.payload), examples=update.num_examples, encrypted=encrypted,
            privacy=privacy))
        self.log.info("update_accepted", round=header.round, peer=pid, bytes=len(message.payload),
                      examples=update.num_examples,
                      ms=round(1000 * (time.perf_counter() - started), 1),
                      have=len(self.rounds.updates), planned=len(self.rounds.plan))
        return ack, True


__all__ = ["UpdateIntake"]
