"""The CKKS layer of a ``ckks`` round on the coordinator: encrypted masked words in, their
masked sum out. Socket-free.

In ``ckks`` mode the round is secagg's exchange (:mod:`~latentfl.platform.coordinator.secagg_exchange`)
with the masked words CKKS-encrypted (:mod:`latentfl.privacy.ckks`). This part holds only the
public context (a context with a secret key is refused at start-up) and:

1. checks every ENCRYPTED_UPDATE against it before its ACK (ciphertext count, size, level,
   scale; :func:`~latentfl.privacy.ckks.check_ciphertexts`), never decrypting;
2. :meth:`EncryptedSum.start`: once the survivor set is certified, sums the survivors'
   ciphertexts chunk by chunk (at least ``min_cohort``, at most ``MAX_COHORT``);
3. :meth:`~EncryptedSum.step`: ONE survivor, chosen deterministically (online ones in sorted
   id order), gets a DECRYPT_TASK with the *sum*; the next one is asked when
   ``decrypt_deadline`` passes. Only survivors: a participant decrypts only for an attempt
   whose survivor set it signed, against the certificate it received, and only once;
4. :meth:`~EncryptedSum.receive`: takes the asked participant's signed AGGREGATE, the integer
   limb sums, and joins them into the masked sum modulo 2^64, which secagg's shares unmask.

Whatever it sends, the decryptor learns nothing: every limb is one-time-pad masked. No
individual ciphertext ever leaves the coordinator even so: the only ciphertexts it sends are
sums. A coordinator that lied here would still get at most one decryption per survivor per
attempt, each of a ciphertext whose words keep pairwise masks with honest survivors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latentfl.errors import ProtocolError, Reason
from latentfl.log import get_logger
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.crypto import ckks_keys
from latentfl.platform.protocol import Ack, Kind, Message, Outgoing
from latentfl.platform.wire.payloads import decode_limb_sums, encode_decrypt_task
from latentfl.platform.wire.secagg import attempt_of
from latentfl.privacy.ckks import (
    LIMBS_PER_WORD,
    check_ciphertexts,
    check_cohort_size,
    ciphertext_count,
    join_limbs,
    sum_ciphertexts,
)


def load_public_context(config: CoordinatorConfig) -> Any:
    """The coordinator's CKKS context; SecurityError if unreadable or if it holds a secret key."""
    return ckks_keys.load_public_context(config.ckks_context
                                         or config.key_dir / ckks_keys.PUBLIC_CONTEXT_FILE)


class EncryptedSum:
    """The ciphertext side of one ckks round (see the module docstring)."""

    def __init__(self, config: CoordinatorConfig, length: int, *, journal: Journal) -> None:
        self.config = config.aggregation
        self.max_bytes = config.max_message_bytes
        self.length = length
        self.journal = journal
        self.log = get_logger("ckks", session=config.session)
        self.context = load_public_context(config)
        self.count = ciphertext_count(LIMBS_PER_WORD * length, self.context)
        self.round, self.attempt = 0, ""
        self.sum: list[bytes] | None = None
        self.cohort: list[str] = []
        self.asked: list[str] = []
        self.asked_at = 0.0
        self.masked_sum: np.ndarray | None = None
        self.answered: dict[tuple[int, str], str] = {}  # (round, attempt) -> accepted digest

    @property
    def waiting(self) -> bool:
        """A sum is out for decryption and no answer has been accepted yet."""
        return self.sum is not None and self.masked_sum is None

    def check_upload(self, ciphertexts: Sequence[bytes]) -> None:
        """ProtocolError 'bad-ciphertext' unless the upload is well-formed (never decrypts)."""
        check_ciphertexts(self.context, ciphertexts, self.count, self.config.max_ciphertext_bytes)

    def start(self, round: int, attempt: str, uploads: Mapping[str, Sequence[bytes]]) -> None:
        """Sum the survivors' ciphertexts (PrivacyError below min_cohort, ConfigError above
        MAX_COHORT)."""
        self.cohort = sorted(uploads)
        check_cohort_size(len(self.cohort))
        self.sum = sum_ciphertexts(self.context, [uploads[p] for p in self.cohort],
                                   min_cohort=self.config.min_cohort)
        self.round, self.attempt = round, attempt
        self.asked, self.asked_at, self.masked_sum = [], 0.0, None
        self.journal.append("encrypted_sum", round=round, attempt=attempt, covers=self.cohort)
        self.log.info("encrypted_sum", round=round, covers=len(self.cohort),
                      ciphertexts=len(self.sum))

    def step(self, online: Sequence[str], now: float) -> list[Outgoing]:
        """The DECRYPT_TASK to send now, if a decryptor is due (the first, or the next one
        after ``decrypt_deadline``)."""
        pid = self.next_decryptor(online, now) if self.waiting else None
        if pid is None:
            return []
        assert self.sum is not None
        payload, meta = encode_decrypt_task(self.sum, length=self.length, cohort=len(self.cohort))
        self.journal.append("decrypt_requested", round=self.round, attempt=self.attempt,
                            peer=pid, covers=self.cohort, asked=len(self.asked))
        self.log.info("decrypt_requested", round=self.round, peer=pid, bytes=len(payload))
        return [Outgoing(pid, Kind.DECRYPT_TASK, self.round, payload,
                         meta | {"attempt": self.attempt})]

    def receive(self, message: Message) -> tuple[list[Outgoing], bool]:
        """Check an AGGREGATE; its ACK, and whether it brought the masked sum now (False for a
        re-send of the one already accepted). ProtocolError to refuse it."""
        header = message.header
        pid, digest, key = header.sender, header.payload_sha256, (header.round,
                                                                   attempt_of(message))
        ack = [Outgoing(pid, Kind.ACK, header.round, meta=Ack(digest).meta())]
        if self.answered.get(key) == digest:
            return ack, False
        if not self.waiting or key != (self.round, self.attempt):
            raise ProtocolError(Reason.LATE, f"limb sums from {pid} for round {header.round} "
                                             "are not awaited.")
        if pid not in self.asked:
            raise ProtocolError(Reason.NOT_ASKED, f"{pid} was not asked to decrypt round "
                                                  f"{header.round}.")
        sums = decode_limb_sums(message, length=self.length, cohort=len(self.cohort),
                                max_bytes=self.max_bytes)
        self.masked_sum = join_limbs(sums)
        self.answered = {key: digest}
        self.journal.append("accepted", kind=Kind.AGGREGATE.value, peer=pid, round=header.round,
                            attempt=self.attempt, sha256=digest, covers=self.cohort)
        self.log.info("limb_sums_decrypted", round=header.round, peer=pid)
        return ack, True

    def next_deadline(self) -> float | None:
        """When the decryptor asked last has had its ``decrypt_deadline`` (None: none asked)."""
        if not (self.waiting and self.asked):
            return None
        return self.asked_at + self.config.decrypt_deadline

    def next_decryptor(self, online: Sequence[str], now: float) -> str | None:
        """Who to ask now: the first candidate, or the next one once the deadline passed."""
        if self.asked and now - self.asked_at < self.config.decrypt_deadline:
            return None
        online_set = set(online)
        candidates = [p for p in self.cohort if p in online_set]
        fresh = [p for p in candidates if p not in self.asked]
        if not fresh:  # everyone was asked once: start over with whoever is online
            self.asked = []
            fresh = candidates
        if not fresh:
            return None
        self.asked.append(fresh[0])
        self.asked_at = now
        return fresh[0]

    def reset(self) -> None:
        """Drop the sum (the round was closed or is planned again)."""
        self.sum, self.asked, self.masked_sum = None, [], None


__all__ = ["EncryptedSum", "load_public_context"]
