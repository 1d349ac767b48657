"""Taking in participants' updates: checked, then persisted and journaled in groups, then acked.

An UPDATE (plain mode), ENCRYPTED_UPDATE (ckks mode) or MASKED_UPDATE (secagg mode) is refused
unless it fits the session's mode, the round in progress and the participant's task
(``Rounds.check_update``); its payload is checked against the model manifest (plain), or
against the secagg exchange (the sender must have shared its seeds this round): its masked
words' shape, or its ciphertexts against the public CKKS context (never decrypted). A checked update is *held*;
:meth:`UpdateIntake.commit` then makes every held update durable together: their files fsynced
together and their folder once, their journal lines (with the privacy fields each signed header
reports) written and fsynced once, and only then are they counted (a masked one recorded by the
secagg exchange) and their ACKs returned. If any step fails, the group's files are removed and its
journal lines cut off: nothing is half-accepted. A re-send of an accepted update is acked again,
counted once. Socket-free, like the rounds: the daemon sends the outbox.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from latentfl.errors import ProtocolError, Reason
from latentfl.log import get_logger
from latentfl.models import ModelManifest
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.coordinator.rounds import Rounds
from latentfl.platform.coordinator.secagg_exchange import MaskedAggregation
from latentfl.platform.protocol import Ack, Kind, Message, Outgoing
from latentfl.platform.wire.payloads import PRIVACY_META, decode_update
from latentfl.strategies import Update

#: The update kind each aggregation mode takes.
UPDATE_KIND = {"plain": Kind.UPDATE, "ckks": Kind.ENCRYPTED_UPDATE,
               "secagg": Kind.MASKED_UPDATE}


@dataclass(frozen=True)
class Held:
    """A checked update waiting for the group commit."""

    message: Message
    update: Update
    started: float

    @property
    def digest(self) -> str:
        return self.message.header.payload_sha256

    def ack(self) -> Outgoing:
        header = self.message.header
        return Outgoing(header.sender, Kind.ACK, header.round, meta=Ack(self.digest).meta())


class UpdateIntake:
    """Accepts one session's updates into its :class:`Rounds` (see the module docstring)."""

    def __init__(self, config: CoordinatorConfig, rounds: Rounds, journal: Journal,
                 manifest: ModelManifest, masked: MaskedAggregation | None = None) -> None:
        self.mode = config.aggregation.mode
        self.max_bytes = config.max_message_bytes
        self.rounds = rounds
        self.journal = journal
        self.manifest = manifest
        self.masked = masked
        self.held: dict[str, Held] = {}  # by participant
        self._resent: list[Held] = []  # re-sends of held updates: acked with the group
        self.log = get_logger("coordinator", session=config.session)

    def receive(self, message: Message) -> list[Outgoing]:
        """Check a verified update and hold it for :meth:`commit`; the ACK of a re-send of an
        update already on disk is returned at once. ProtocolError to refuse it."""
        header, pid = message.header, message.header.sender
        started = time.perf_counter()
        if header.kind is not UPDATE_KIND[self.mode]:
            raise ProtocolError(Reason.WRONG_MODE, f"{header.kind.value} from {pid} refused: "
                                                   f"this session aggregates in {self.mode!r} "
                                                   "mode.")
        if pid in self.held:
            if self.held[pid].digest != header.payload_sha256:
                raise ProtocolError(Reason.DUPLICATE, f"{pid} already delivered a different "
                                                      f"update for round {header.round}.")
            self._resent.append(self.held[pid])
            return []
        if self.rounds.check_update(pid, header.round, header.payload_sha256):
            self.journal.append("accepted", kind=header.kind.value, peer=pid, round=header.round,
                                sha256=header.payload_sha256, resent=True)
            self.log.info("update_resent", round=header.round, peer=pid)
            return [Outgoing(pid, Kind.ACK, header.round,
                             meta=Ack(header.payload_sha256).meta())]
        if self.masked is not None:
            update = self._masked_update(message)
        else:
            update = decode_update(message, self.manifest, max_bytes=self.max_bytes)
        self.held[pid] = Held(message, update, started)
        return []

    def commit(self) -> tuple[list[Outgoing], list[str]]:
        """Make the held updates durable together, count them, and return their ACKs and the
        newly accepted participants. GroupFailed (naming the messages) when that failed:
        nothing of the group was kept."""
        group, resent = list(self.held.values()), self._resent
        self.held, self._resent = {}, []
        if not group:
            return [], []
        before = len(self.rounds.updates)
        try:
            self.rounds.accept_group([(h.update, h.digest, h.message.payload) for h in group],
                                     lambda: self.journal.append_group([
                                         ("accepted", self._journal_fields(h)) for h in group]))
        except Exception as exc:
            raise GroupFailed([h.message for h in group + resent], exc) from exc
        for count, h in enumerate(group, before + 1):  # each line counts up to its own update
            header = h.message.header
            have = min(count, len(self.rounds.updates))
            if self.masked is not None:  # checked in receive; nothing ran since
                self.masked.add_upload(h.message, h.update.weights, h.update.num_examples)
            self.log.info("update_accepted", round=header.round, peer=header.sender,
                          bytes=len(h.message.payload), examples=h.update.num_examples,
                          ms=round(1000 * (time.perf_counter() - h.started), 1),
                          group=len(group), have=have, planned=len(self.rounds.plan),
                          summary=f"round {header.round}: updates {have}/"
                                  f"{len(self.rounds.plan)} (from {header.sender})")
        return [h.ack() for h in group + resent], [h.message.header.sender for h in group]

    def _journal_fields(self, held: Held) -> dict:
        header = held.message.header
        privacy = {k: header.meta[k] for k in PRIVACY_META if header.meta.get(k) is not None}
        return {"kind": header.kind.value, "peer": header.sender, "round": header.round,
                "sha256": held.digest, "bytes": len(held.message.payload),
                "examples": held.update.num_examples,
                "encrypted": header.kind is not Kind.UPDATE, "privacy": privacy}

    def _masked_update(self, message: Message) -> Update:
        """A MASKED_UPDATE or ENCRYPTED_UPDATE as the store keeps it (its masked words or their
        ciphertexts), checked against the secagg exchange ('bad-ciphertext' for ciphertexts
        that do not fit the public context; never decrypted); :meth:`commit` has the exchange
        count it once it is durable."""
        assert self.masked is not None
        update = decode_update(message, None, max_bytes=self.max_bytes)
        self.masked.check_upload(message, update.weights)
        return update


class GroupFailed(Exception):
    """A group commit failed: ``messages`` were not accepted (the daemon refuses each)."""

    def __init__(self, messages: list[Message], cause: BaseException) -> None:
        super().__init__(f"{len(messages)} updates could not be made durable: {cause!r}")
        self.messages = messages
        self.cause = cause


__all__ = ["GroupFailed", "Held", "UpdateIntake"]
