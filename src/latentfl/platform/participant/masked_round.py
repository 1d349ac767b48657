"""The agent's side of a ``secagg`` or ``ckks`` round: the socket-free glue between the secagg
kinds and :class:`latentfl.privacy.secagg.SecAggClient`.

A secagg or ckks TASK opens a :class:`MaskedRound` (its attempt id and parameters in ``meta.secagg``);
the agent sends the keys at once and trains meanwhile. Each coordinator message then yields
the agent's answer: the key list its sealed shares, the share inbox nothing (the neighbours to
mask with are now known), the survivor set its signature (only once its own upload was
acknowledged: :meth:`MaskedRound.acknowledged`), the unmask request (the certified set) the
shares to reveal, a DECRYPT_TASK (ckks) the limb sums of the certified aggregate, once. The
masked update is ready once both the training and the inbox are:
:meth:`MaskedRound.masked_update` (in ckks mode its words' limbs CKKS-encrypted, an
ENCRYPTED_UPDATE; see :mod:`latentfl.privacy.ckks`). The site's floors
(``[privacy.policy]`` ``min_cohort``, ``max_dropped_fraction``) bind every phase; a refused
request raises PrivacyError with the rule, which the agent logs and DECLINEs. A round planned
again comes with a new attempt id; a site that already uploaded a masked update for that round
declines it (two sums over overlapping cohorts of one round would reveal their difference).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from latentfl.errors import PrivacyError
from latentfl.models import flatten_state
from latentfl.platform.participant.local_step import Trained
from latentfl.platform.protocol import Kind, Message
from latentfl.platform.wire.payloads import encode_update
from latentfl.platform.wire.secagg import (
    decode_key_list,
    decode_params,
    decode_sealed,
    decode_survivors,
    decode_unmask,
    encode_advert,
    encode_reveal,
    encode_sealed,
    encode_signature,
    masked_tensors,
)
from latentfl.privacy.ckks import ciphertexts_to_tensors, decrypt_certified, encrypt_masked
from latentfl.privacy.rules import PolicyRule
from latentfl.privacy.secagg import Certificate, SecAggClient, SiteFloors

Reply = tuple[Kind, bytes, dict]


class MaskedRound:
    """One secagg attempt of one round, as this participant lives it."""

    def __init__(self, message: Message, *, pid: str, session: str,
                 signing_key: Ed25519PrivateKey,
                 verify_keys: Mapping[str, Ed25519PublicKey], ckks: Any = None,
                 floors: SiteFloors | None = None) -> None:
        """``ckks``: the site's secret CKKS context in ckks mode (None: secagg); ``floors``:
        the site policy's limits."""
        self.attempt, params = decode_params(message, session)
        self.ckks = ckks
        self.floors = floors or SiteFloors()
        self.round = params.round
        self.client = SecAggClient(pid, params, signing_key=signing_key, verify_keys=verify_keys,
                                   floors=self.floors)
        self.certificate: Certificate | None = None
        self.trained: Trained | None = None
        self.inbox_arrived = False
        self.uploaded = False

    def matches(self, message: Message) -> bool:
        """The message belongs to this attempt (its round and attempt id)."""
        return (message.header.round == self.round
                and message.header.meta.get("attempt") == self.attempt)

    def renewed_by(self, task: Message, session: str) -> bool:
        """A secagg or ckks TASK of this round under another attempt id (the round was planned
        again)."""
        if task.header.round != self.round or "secagg" not in task.header.meta:
            return False
        attempt, _ = decode_params(task, session)
        return attempt != self.attempt

    @property
    def shared(self) -> bool:
        """Our seed shares went out (our keys are in the key list the coordinator fixed)."""
        return bool(self.client.adverts)

    def keys(self) -> Reply:
        """SECAGG_KEYS: this round's public keys, signed."""
        return Kind.SECAGG_KEYS, encode_advert(self.client.advertise()), self._meta()

    def on_key_list(self, message: Message) -> Reply:
        """SECAGG_SHARES for the relayed key list (SecurityError if a key was substituted)."""
        sealed = self.client.share_keys(decode_key_list(message))
        return Kind.SECAGG_SHARES, encode_sealed(sealed), self._meta()

    def on_inbox(self, message: Message) -> None:
        self.client.receive_shares(decode_sealed(message))
        self.inbox_arrived = True

    def masked_update(self) -> Reply | None:
        """MASKED_UPDATE (secagg) or ENCRYPTED_UPDATE (ckks) once the training and the inbox
        are both in (None before)."""
        if self.trained is None or not self.inbox_arrived or self.uploaded:
            return None
        update, manifest, report = self.trained
        flat = flatten_state(update.weights, manifest).numpy()
        masked = self.client.mask(flat, int(update.num_examples))
        if self.ckks is None:
            kind, weights = Kind.MASKED_UPDATE, masked_tensors(masked)
        else:
            kind = Kind.ENCRYPTED_UPDATE
            weights = ciphertexts_to_tensors(encrypt_masked(self.ckks, masked))
        self.uploaded = True
        payload, meta = encode_update(dataclasses.replace(
            update, weights=weights, class_counts=None, metrics={}), report)
        return kind, payload, meta | self._meta()

    def acknowledged(self, kind: Kind) -> None:
        """The coordinator acked an upload of ours of ``kind``: if it was the masked one, the
        survivor set may now be signed."""
        if self.uploaded and kind in (Kind.MASKED_UPDATE, Kind.ENCRYPTED_UPDATE) \
                and self.client.phase == "masked":
            self.client.acknowledge()

    def on_survivors(self, message: Message) -> Reply:
        """SECAGG_SIGNATURE of the survivor set (PrivacyError when it breaks a rule)."""
        signature = self.client.sign_survivors(decode_survivors(message))
        return Kind.SECAGG_SIGNATURE, encode_signature(signature), self._meta()

    def on_unmask(self, message: Message) -> Reply:
        """SECAGG_REVEAL against the certificate (PrivacyError when it breaks a rule)."""
        certificate = decode_unmask(message)
        revealed = self.client.reveal(certificate)
        self.certificate = certificate
        return Kind.SECAGG_REVEAL, encode_reveal(revealed), self._meta()

    def decrypt(self, ciphertexts: list[bytes], length: int, cohort: int) -> Any:
        """The limb sums of this attempt's certified aggregate, once (PrivacyError otherwise,
        and when the task's cohort is not the certified one)."""
        certificate = self.certificate
        if certificate is None:
            self.client.refusals.append(PolicyRule.SECAGG_NOT_SIGNED)
            raise PrivacyError(PolicyRule.SECAGG_NOT_SIGNED, "this site decrypts only after it received "
                                                    "the certified survivor set of the attempt.")
        if cohort != len(certificate.survivors):
            self.client.refusals.append(PolicyRule.SECAGG_CERTIFICATE)
            raise PrivacyError(PolicyRule.SECAGG_CERTIFICATE, f"the decrypt task covers {cohort} uploads; "
                                                     "this site decrypts only the certified "
                                                     "survivor set it revealed for.")
        return decrypt_certified(self.client, self.ckks, ciphertexts, length, certificate)

    def _meta(self) -> dict:
        return {"attempt": self.attempt}


def task_min_cohort(message: Message, session: str) -> int | None:
    """The ``min_cohort`` a secagg or ckks TASK states (None for other tasks), for the site
    policy's floor; ProtocolError when its parameters are malformed."""
    if "secagg" not in message.header.meta:
        return None
    return decode_params(message, session)[1].min_cohort


def site_floors(policy: Any) -> SiteFloors:
    """The secagg floors of a site policy (:class:`latentfl.privacy.SitePolicy`)."""
    return SiteFloors(min_cohort=policy.min_cohort,
                      max_dropped_fraction=policy.max_dropped_fraction)


__all__ = ["MaskedRound", "Trained", "site_floors", "task_min_cohort"]
