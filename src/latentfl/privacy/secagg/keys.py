"""A round's key material: signed key advertisements and seeds shared t-of-n, sealed per holder.

Each participant makes two fresh X25519 key pairs per attempt (Bonawitz et al. 2017): one to
seal the shares it sends (``share`` key), one whose agreements seed its pairwise masks (``mask``
key). It advertises both public keys signed with its enrolled Ed25519 key, binding the session
(which names the attempt), the round and its id, so a coordinator relaying the adverts cannot
substitute keys of its own.

Shares. Secrets are split with Shamir's scheme over GF(2^128) (pycryptodome's
``Crypto.Protocol.SecretSharing.Shamir``, 16-byte secrets): the 16-byte self-mask seed once, the
32-byte mask secret key as two 16-byte halves with independent polynomials. The holders of
``u``'s shares are ``u`` and its neighbours, in sorted order, share index = position + 1; the
threshold is :func:`threshold`, two thirds of them plus one (the active-adversary choice of
Bonawitz et al.; :mod:`latentfl.privacy.secagg.consistency` says what it buys). Each holder's
shares travel sealed with ChaCha20-Poly1305 under a key and nonce derived from the X25519
agreement of the share keys, the *transcript* (the hash of the signed key list, which binds the
session, the attempt and the round) and the direction sender -> recipient; the client splits
and seals once per attempt, so no key-nonce pair is ever used twice.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from latentfl.errors import ProtocolError, Reason, SecurityError
from latentfl.privacy.secagg.masks import derive_key

SEED_BYTES = 16
_SHARE = struct.Struct(">H16s16s16s")  # index, self-seed share, mask-key share (two halves)


def threshold(holders: int) -> int:
    """Shares (or survivor signatures) needed among ``holders``: ``floor(2 n / 3) + 1``, at
    least 2 (Bonawitz et al. 2017, active adversary; see the consistency module)."""
    return max(2, 2 * holders // 3 + 1)


@dataclass(frozen=True)
class Advert:
    """A participant's signed round keys, as relayed by the coordinator."""

    pid: str
    share_public: bytes
    mask_public: bytes
    signature: bytes

    def to_json(self) -> dict[str, str]:
        return {"pid": self.pid, "share_public": self.share_public.hex(),
                "mask_public": self.mask_public.hex(), "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, data: object) -> Advert:
        """Parse a relayed advert; ProtocolError 'malformed' unless it has the expected fields."""
        if not isinstance(data, dict) or set(data) != {"pid", "share_public", "mask_public",
                                                       "signature"}:
            raise ProtocolError(Reason.MALFORMED, "secagg advert is not an object with pid, "
                                                  "share_public, mask_public and signature.")
        try:
            advert = cls(str(data["pid"]), unhex(data["share_public"], 32),
                         unhex(data["mask_public"], 32), unhex(data["signature"], 64))
        except ValueError as exc:
            raise ProtocolError(Reason.MALFORMED, f"secagg advert of {data['pid']!r}: {exc}.") \
                from None
        return advert

    def verify(self, verify_key: Ed25519PublicKey, *, session: str, round: int) -> None:
        """SecurityError unless the signature is the enrolled key's over this session/round."""
        try:
            verify_key.verify(self.signature, advert_bytes(self.pid, self.share_public,
                                                           self.mask_public, session, round))
        except InvalidSignature:
            raise SecurityError(f"secagg advert of {self.pid!r} for round {round} does not "
                                "verify with its enrolled signing key; expected keys it "
                                "signed itself.") from None


def unhex(text: object, size: int) -> bytes:
    """``size`` bytes from a hex string; ValueError naming what was expected otherwise."""
    try:
        raw = bytes.fromhex(text) if isinstance(text, str) else b""
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != size:
        raise ValueError(f"expected {size} bytes as hex")
    return raw


def advert_bytes(pid: str, share_public: bytes, mask_public: bytes, session: str,
                 round: int) -> bytes:
    """What an advert's signature covers."""
    return (f"latentfl/secagg/advert/{session}/{round}/{pid}/".encode()
            + share_public + mask_public)


class RoundKeys:
    """One participant's fresh key pairs for one round (never written to disk)."""

    def __init__(self) -> None:
        self.share_secret = X25519PrivateKey.generate()
        self.mask_secret = X25519PrivateKey.generate()
        self.self_seed = os.urandom(SEED_BYTES)

    def advert(self, pid: str, signing_key: Ed25519PrivateKey, *, session: str,
               round: int) -> Advert:
        share_public = self.share_secret.public_key().public_bytes_raw()
        mask_public = self.mask_secret.public_key().public_bytes_raw()
        signature = signing_key.sign(advert_bytes(pid, share_public, mask_public, session, round))
        return Advert(pid, share_public, mask_public, signature)


@dataclass(frozen=True)
class Share:
    """A holder's share of one owner's two secrets (self-mask seed, mask secret key)."""

    index: int
    self_seed: bytes
    mask_key: tuple[bytes, bytes]


def split_secrets(keys: RoundKeys, holders: int) -> list[Share]:
    """Shares of ``keys``' self seed and mask secret key for ``holders`` holders (index 1..)."""
    t = threshold(holders)
    mask_raw = keys.mask_secret.private_bytes_raw()
    seeds = Shamir.split(t, holders, keys.self_seed)
    lows = Shamir.split(t, holders, mask_raw[:16])
    highs = Shamir.split(t, holders, mask_raw[16:])
    return [Share(i, s, (lo, hi)) for (i, s), (_, lo), (_, hi) in zip(seeds, lows, highs,
                                                                     strict=True)]


def combine_seed(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """The self-mask seed from at least threshold-many (index, share) pairs."""
    return Shamir.combine(list(shares))


def combine_mask_key(shares: Sequence[tuple[int, tuple[bytes, bytes]]]) -> X25519PrivateKey:
    """The mask secret key from at least threshold-many (index, (low, high)) pairs."""
    low = Shamir.combine([(i, lo) for i, (lo, _) in shares])
    high = Shamir.combine([(i, hi) for i, (_, hi) in shares])
    return X25519PrivateKey.from_private_bytes(low + high)


def _channel(own: X25519PrivateKey, peer_public: bytes, *, transcript: bytes, sender: str,
             recipient: str) -> tuple[ChaCha20Poly1305, bytes]:
    """The AEAD and nonce of one share's journey: both bound to the transcript and direction."""
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    label = f"{transcript.hex()}/{sender}->{recipient}"
    key = derive_key(shared, f"latentfl/secagg/v2/share-key/{label}")
    nonce = hashlib.sha256(f"latentfl/secagg/v2/share-nonce/{label}".encode()).digest()[:12]
    return ChaCha20Poly1305(key), nonce


def seal_share(share: Share, keys: RoundKeys, recipient: Advert, *, sender: str,
               transcript: bytes) -> bytes:
    """``share`` encrypted and authenticated for ``recipient`` only, under ``transcript``."""
    plain = _SHARE.pack(share.index, share.self_seed, *share.mask_key)
    aead, nonce = _channel(keys.share_secret, recipient.share_public, transcript=transcript,
                           sender=sender, recipient=recipient.pid)
    return aead.encrypt(nonce, plain, transcript)


def open_share(sealed: bytes, keys: RoundKeys, sender: Advert, *, recipient: str,
               transcript: bytes) -> Share:
    """A share ``sender`` sealed for us; ProtocolError 'malformed' if it does not open (also
    when it was sealed under another key list, attempt or round)."""
    aead, nonce = _channel(keys.share_secret, sender.share_public, transcript=transcript,
                           sender=sender.pid, recipient=recipient)
    try:
        index, seed, low, high = _SHARE.unpack(aead.decrypt(nonce, bytes(sealed), transcript))
    except (InvalidTag, ValueError, struct.error):
        raise ProtocolError(Reason.MALFORMED, f"the share sealed by {sender.pid!r} does not "
                                              "open with this attempt's keys and key list.") \
            from None
    return Share(index, seed, (low, high))


def verify_adverts(adverts: Sequence[Advert], verify_keys: Mapping[str, Ed25519PublicKey], *,
                   session: str, round: int) -> dict[str, Advert]:
    """The adverts by participant id, each checked against its enrolled key (SecurityError)."""
    out: dict[str, Advert] = {}
    for advert in adverts:
        key = verify_keys.get(advert.pid)
        if key is None or advert.pid in out:
            raise SecurityError(f"secagg advert of {advert.pid!r} is from no enrolled "
                                "participant or repeated; expected one per participant.")
        advert.verify(key, session=session, round=round)
        out[advert.pid] = advert
    return out


__all__ = [
    "SEED_BYTES",
    "Advert",
    "RoundKeys",
    "Share",
    "advert_bytes",
    "combine_mask_key",
    "combine_seed",
    "open_share",
    "seal_share",
    "split_secrets",
    "threshold",
    "unhex",
    "verify_adverts",
]
