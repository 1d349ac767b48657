"""The coordinator's side of CKKS secure aggregation: check, sum, have one participant decrypt.

The coordinator holds only the public CKKS context (a context with a secret key is refused at
start-up). Per round in ``ckks`` mode:

1. every encrypted UPDATE is checked against the public context before its ACK (ciphertext
   count, size, level, scale; :func:`latentfl.privacy.ckks.check_ciphertexts`), never decrypted;
2. at the close the accepted uploads are summed chunk by chunk (at least ``min_cohort``; the sum
   covers those who answered and the total weight is theirs, so dropouts renormalise away);
3. ONE participant, chosen deterministically (the accepted participants first, then the other
   online ones, each in sorted id order), gets a decrypt TASK with the *sum* and the total
   weight; if it does not answer within ``decrypt_deadline`` the next one is asked;
4. its signed answer, the plaintext weighted mean, goes to ``Strategy.accept_aggregate``.

No individual ciphertext ever leaves the coordinator: the only ciphertexts it sends are sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from latentfl.errors import ProtocolError
from latentfl.models import ModelManifest
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.crypto import ckks_keys
from latentfl.platform.payloads import state_length
from latentfl.strategies import Update


def load_public_context(config: CoordinatorConfig) -> Any:
    """The coordinator's CKKS context; SecurityError if unreadable or if it holds a secret key."""
    return ckks_keys.load_public_context(config.ckks_context
                                         or config.key_dir / ckks_keys.PUBLIC_CONTEXT_FILE)


class SecureAggregation:
    """CKKS state of the coordinator for the round being closed (see the module docstring)."""

    def __init__(self, config: CoordinatorConfig, manifest: ModelManifest) -> None:
        from latentfl.privacy.ckks import ciphertext_count

        self.config = config.aggregation
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
        """ProtocolError 'bad_ciphertext' unless the upload is well-formed (never decrypts)."""
        from latentfl.privacy.ckks import check_ciphertexts

        check_ciphertexts(self.context, ciphertexts, self.count, self.config.max_ciphertext_bytes)

    def start(self, round: int, updates: dict[str, Update]) -> None:
        """Sum the accepted encrypted updates of ``round`` (PrivacyError below min_cohort)."""
        from latentfl.privacy.ckks import ciphertexts_from_tensors, sum_ciphertexts

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
            raise ProtocolError("late", f"aggregate from {pid} for round {round} is not awaited.")
        if pid not in self.asked:
            raise ProtocolError("not-asked", f"{pid} was not asked to decrypt round {round}.")
        return False

    def finish(self, digest: str) -> None:
        """The aggregate of the current round was accepted: forget the sum."""
        self.answered = {self.round: digest}
        self.sum = None

    def reset(self) -> None:
        """Drop the sum (the round is planned again)."""
        self.sum, self.asked = None, []


__all__ = ["SecureAggregation", "load_public_context"]
