"""Taking in a participant's update: checked, persisted, journaled, then acknowledged.

An UPDATE (plain mode), ENCRYPTED_UPDATE (ckks mode) or MASKED_UPDATE (secagg mode) is refused
unless it fits the session's mode, the round in progress and the participant's task
(``Rounds.check_update``); its payload is checked against the model manifest, its ciphertexts
against the public CKKS context (never decrypted), or its masked words against the secagg
exchange (the sender must have shared its seeds this round). It is on disk (fsynced) and in the journal, with the privacy fields its signed header
reports, before the ACK is returned. A re-send of an accepted update is acked again, counted
once. Socket-free, like the rounds: the daemon sends the outbox it returns.
"""

from __future__ import annotations

import time

from latentfl.errors import ProtocolError, Reason
from latentfl.log import get_logger
from latentfl.models import ModelManifest
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.coordinator.masked import MaskedAggregation
from latentfl.platform.coordinator.rounds import Rounds
from latentfl.platform.coordinator.secure import SecureAggregation
from latentfl.platform.payloads import PRIVACY_META, decode_encrypted_update, decode_update
from latentfl.platform.protocol import Kind, Message, Outgoing
from latentfl.platform.secagg_payloads import check_masked
from latentfl.strategies import Update

#: The update kind each aggregation mode takes.
UPDATE_KIND = {"plain": Kind.UPDATE, "ckks": Kind.ENCRYPTED_UPDATE,
               "secagg": Kind.MASKED_UPDATE}


class UpdateIntake:
    """Accepts one session's updates into its :class:`Rounds` (see the module docstring)."""

    def __init__(self, config: CoordinatorConfig, rounds: Rounds, journal: Journal,
                 manifest: ModelManifest, secure: SecureAggregation | None,
                 masked: MaskedAggregation | None = None) -> None:
        self.mode = config.aggregation.mode
        self.max_bytes = config.max_message_bytes
        self.rounds = rounds
        self.journal = journal
        self.manifest = manifest
        self.secure = secure
        self.masked = masked
        self.log = get_logger("coordinator", session=config.session)

    def receive(self, message: Message) -> tuple[list[Outgoing], bool]:
        """The ACK of a verified update, and whether it was newly accepted (False: a re-send);
        ProtocolError to refuse it."""
        header, pid = message.header, message.header.sender
        digest, started = header.payload_sha256, time.perf_counter()
        encrypted = header.kind is not Kind.UPDATE
        if header.kind is not UPDATE_KIND[self.mode]:
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
        elif self.masked is not None:
            update = self._masked_update(message)
        else:
            update = decode_update(message, self.manifest, max_bytes=self.max_bytes)
        self.rounds.accept(update, digest)  # fsynced before the ACK
        privacy = {k: header.meta[k] for k in PRIVACY_META if header.meta.get(k) is not None}
        self.journal.append("accepted", kind=header.kind.value, peer=pid, round=header.round,
                            sha256=digest, bytes=len(message.payload),
                            examples=update.num_examples, encrypted=encrypted, privacy=privacy)
        self.log.info("update_accepted", round=header.round, peer=pid, bytes=len(message.payload),
                      examples=update.num_examples,
                      ms=round(1000 * (time.perf_counter() - started), 1),
                      have=len(self.rounds.updates), planned=len(self.rounds.plan),
                      summary=f"round {header.round}: updates {len(self.rounds.updates)}/"
                              f"{len(self.rounds.plan)} (from {pid})")
        return ack, True

    def _masked_update(self, message: Message) -> Update:
        """A MASKED_UPDATE as the store keeps it (its masked words), once the secagg exchange
        took it into the sum to be."""
        assert self.masked is not None
        update = decode_update(message, None, max_bytes=self.max_bytes)
        check_masked(update.weights, self.masked.length)
        self.masked.add_upload(message, update.weights, update.num_examples)
        return update


__all__ = ["UpdateIntake"]
