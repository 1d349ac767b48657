"""The coordinator's side of CKKS secure aggregation, as a socket-free state machine.

The coordinator holds only the public CKKS context (a context with a secret key is refused at
start-up). Per round in ``ckks`` mode:

1. every ENCRYPTED_UPDATE is checked against the public context before its ACK (ciphertext
   count, size, level, scale; :func:`latentfl.privacy.ckks.check_ciphertexts`), never decrypted;
2. :meth:`SecureAggregation.close` sums the accepted uploads chunk by chunk (at least
   ``min_cohort``; the sum covers those who answered and the total weight is theirs, so
   dropouts renormalise away);
3. ONE participant, chosen deterministically (the accepted participants first, then the other
   online ones, each in sorted id order), gets a DECRYPT_TASK with the *sum* and the total
   weight; :meth:`~SecureAggregation.step` asks the next one when ``decrypt_deadline`` passes;
4. :meth:`~SecureAggregation.receive_aggregate` takes its signed AGGREGATE, the plaintext
   weighted mean, which the daemon hands to ``Strategy.accept_aggregate``.

Like :class:`~latentfl.platform.coordinator.rounds.Rounds` it owns no socket and no clock: each
call returns an outbox of :class:`~latentfl.platform.protocol.Outgoing` messages for the daemon
to sign and send, and journals what it decided. No individual ciphertext ever leaves the
coordinator: the only ciphertexts it sends are sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from latentfl.errors import ProtocolError, Reason
from latentfl.log import get_logger
from latentfl.models import ModelManifest
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.crypto import ckks_keys
from latentfl.platform.payloads import decode_update, encode_decrypt_task, state_length
from latentfl.platform.protocol import Kind, Message, Outgoing
from latentfl.privacy.ckks import (
    check_ciphertexts,
    ciphertext_count,
    ciphertexts_from_tensors,
    sum_ciphertexts,
)
from latentfl.strategies import Update


def load_public_context(config: CoordinatorConfig) -> Any:
    """The coordinator's CKKS context; SecurityError if unreadable or if it holds a secret key."""
    return ckks_keys.load_public_context(config.ckks_context
                                         or config.key_dir / ckks_keys.PUBLIC_CONTEXT_FILE)


class SecureAggregation:
    """CKKS state of the coordinator for the round being closed (see the module docstring)."""

    def __init__(self, config: CoordinatorConfig, manifest: ModelManifest, *,
                 journal: Journal) -> None:
        self.config = config.aggregation
        self.model = config.strategy.model
        self.max_bytes = config.max_message_bytes
        self.manifest = manifest
        self.journal = journal
        self.log = get_logger("secure_aggregation", session=config.session)
        self.context = load_public_context(config)
        self.length = state_length(manifest)
        self.count = ciphertext_count(self.length, self.context)
        self.round = 0
        self.sum: list[bytes] | None = None
        self.total_weight = 0
        self.cohort: list[str] = []
        self.asked: list[str] = []
        self.asked_at = 0.0
        self.answered: dict[int, str] = {}  # round -> payload digest of the accepted aggregate

    @property
    def waiting(self) -> bool:
        """A sum is out for decryption and no answer has been accepted yet."""
        return self.sum is not None

    def check_upload(self, ciphertexts: Sequence[bytes]) -> None:
        """ProtocolError 'bad-ciphertext' unless the upload is well-formed (never decrypts)."""
        check_ciphertexts(self.context, ciphertexts, self.count, self.config.max_ciphertext_bytes)

    # -- closing a round ------------------------------------------------------------------
    def close(self, round: int, updates: dict[str, Update], online: Sequence[str],
              now: float) -> list[Outgoing]:
        """Sum ``round``'s accepted uploads and ask the first decryptor (PrivacyError below
        min_cohort)."""
        self.start(round, updates)
        self.journal.append("encrypted_sum", round=round, covers=self.cohort,
                            total_weight=self.total_weight)
        self.log.info("encrypted_sum", round=round, covers=len(self.cohort),
                      ciphertexts=len(self.sum))
        return self.step(online, now)

    def step(self, online: Sequence[str], now: float) -> list[Outgoing]:
        """The DECRYPT_TASK to send now, if a decryptor is due (the first, or the next one
        after ``decrypt_deadline``)."""
        pid = self.next_decryptor(online, now)
        if pid is None:
            return []
        payload, meta = encode_decrypt_task(self.sum, total_weight=self.total_weight,
                                            length=self.length, cohort=len(self.cohort),
                                            model=self.model, manifest_digest=self.manifest.digest)
        self.journal.append("decrypt_requested", round=self.round, peer=pid, covers=self.cohort,
                            attempt=len(self.asked))
        self.log.info("decrypt_requested", round=self.round, peer=pid, bytes=len(payload))
        return [Outgoing(pid, Kind.DECRYPT_TASK, self.round, payload, meta)]

    def receive_aggregate(self, message: Message) -> tuple[list[Outgoing], Update | None]:
        """Check an AGGREGATE; its ACK, and the aggregate to hand to the strategy (None for a
        re-send of the one already accepted). ProtocolError to refuse it."""
        header = message.header
        pid, digest = header.sender, header.payload_sha256
        ack = [Outgoing(pid, Kind.ACK, header.round, meta={"sha256": digest})]
        if self.check_answer(pid, header.round, digest):
            return ack, None
        aggregate = decode_update(message, self.manifest, max_bytes=self.max_bytes)
        if aggregate.num_examples != self.total_weight:
            raise ProtocolError(Reason.MALFORMED, f"aggregate covers {aggregate.num_examples} "
                                                  f"examples; the sum sent covers "
                                                  f"{self.total_weight}.")
        self.journal.append("accepted", kind=Kind.AGGREGATE.value, peer=pid, round=header.round,
                            sha256=digest, covers=self.cohort)
        self.log.info("aggregate_decrypted", round=header.round, peer=pid)
        self.answered = {self.round: digest}
        self.sum = None
        return ack, aggregate

    def reset(self) -> None:
        """Drop the sum (the round is planned again)."""
        self.sum, self.asked = None, []

    # -- the steps, one by one ------------------------------------------------------------
    def start(self, round: int, updates: dict[str, Update]) -> None:
        """Sum the accepted encrypted updates of ``round`` (PrivacyError below min_cohort)."""
        cohort = sorted(updates)
        blobs = [ciphertexts_from_tensors(updates[p].weights) for p in cohort]
        self.sum = sum_ciphertexts(self.context, blobs, min_cohort=self.config.min_cohort)
        self.round, self.cohort = round, cohort
        self.total_weight = int(sum(updates[p].num_examples for p in cohort))
        self.asked, self.asked_at = [], 0.0

    def next_decryptor(self, online: Sequence[str], now: float) -> str | None:
        """Who to ask now: the first candidate, or the next one once the deadline passed."""
        if self.sum is None:
            return None
        if self.asked and now - self.asked_at < self.config.decrypt_deadline:
            return None
        online_set = set(online)
        candidates = [p for p in self.cohort if p in online_set]
        candidates += sorted(online_set - set(self.cohort))
        fresh = [p for p in candidates if p not in self.asked]
        if not fresh:  # everyone was asked once: start over with whoever is online
            self.asked = []
            fresh = candidates
        if not fresh:
            return None
        self.asked.append(fresh[0])
        self.asked_at = now
        return fresh[0]

    def check_answer(self, pid: str, round: int, digest: str) -> bool:
        """ProtocolError unless ``pid`` may deliver the aggregate of ``round``; True for a re-send
        of the aggregate already accepted (acked again, not used twice)."""
        if self.answered.get(round) == digest:
            return True
        if self.sum is None or round != self.round:
            raise ProtocolError(Reason.LATE, f"aggregate from {pid} for round {round} is not "
                                             "awaited.")
        if pid not in self.asked:
            raise ProtocolError(Reason.NOT_ASKED, f"{pid} was not asked to decrypt round "
                                                  f"{round}.")
        return False


__all__ = ["SecureAggregation", "load_public_context"]
