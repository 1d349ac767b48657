"""Mask streams and the neighbour graph of a secure-aggregation round.

Masks. A 16- or 32-byte seed is expanded with HKDF-SHA256 (the seed is the input key material,
``info`` names the use, so one seed never feeds two streams) into a ChaCha20 key, whose
keystream over zero bytes is read as uint64 words: a mask uniform in Z / 2^64.

Pairwise seeds. ``u`` and ``v`` agree on the X25519 shared secret of their round mask keys;
HKDF binds it to the session, the round and the ordered pair, so the seed is fresh each round.
The lower id adds the pair's mask, the higher subtracts it, so the pair's masks cancel in a sum.

Graph (SecAgg+, Bell et al. 2020). Each participant masks with, and shares its seeds among, its
neighbours only. Cohorts up to ``COMPLETE_UP_TO`` use the complete graph (Bonawitz et al.
2017); larger ones a Harary graph of even degree ``2 * ceil(LOG_FACTOR * log2 n)`` over a
permutation of the ids seeded by the hash of the signed key list (the transcript), so every
party that accepted the same key list computes the same graph, and the coordinator cannot pick
a permutation without changing signed adverts (it chose the attempt id, so a seed from the
attempt id would let it grind for a graph that isolates a target).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COMPLETE_UP_TO = 16
LOG_FACTOR = 1.5
_NONCE = bytes(16)  # ChaCha20's 16-byte counter+nonce; each derived key is used once


def derive_key(secret: bytes, info: str, length: int = 32) -> bytes:
    """HKDF-SHA256 of ``secret`` for the use ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                info=info.encode()).derive(secret)


def mask_stream(seed: bytes, length: int, info: str) -> np.ndarray:
    """``length`` uint64 words of the ChaCha20 keystream keyed by HKDF(seed, info)."""
    key = derive_key(seed, info)
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * length)), dtype=np.uint64).copy()


def pairwise_seed(own_secret: X25519PrivateKey, peer_public: X25519PublicKey, *, session: str,
                  round: int, pair: tuple[str, str]) -> bytes:
    """The seed ``u`` and ``v`` share this round (same value on both sides)."""
    low, high = sorted(pair)
    shared = own_secret.exchange(peer_public)
    return derive_key(shared, f"latentfl/secagg/pair/{session}/{round}/{low}/{high}")


def pairwise_mask(seed: bytes, length: int, *, own: str, peer: str) -> np.ndarray:
    """The pair's mask with the sign ``own`` adds: + for the lower id, - for the higher."""
    mask = mask_stream(seed, length, "latentfl/secagg/pairwise-mask")
    return mask if own < peer else (np.uint64(0) - mask)


def self_mask(seed: bytes, length: int) -> np.ndarray:
    """The participant's own mask, removed from the sum once its seed is reconstructed."""
    return mask_stream(seed, length, "latentfl/secagg/self-mask")


def degree(n: int) -> int:
    """Neighbours per participant in a cohort of ``n``: n - 1 up to COMPLETE_UP_TO, else
    the even ``2 * ceil(LOG_FACTOR * log2 n)`` (capped at n - 1)."""
    if n <= COMPLETE_UP_TO:
        return max(n - 1, 0)
    return min(n - 1, 2 * math.ceil(LOG_FACTOR * math.log2(n)))


def neighbours(ids: Sequence[str], *, seed: bytes) -> dict[str, list[str]]:
    """The neighbour graph over ``ids`` drawn from ``seed`` (the transcript; see the module
    docstring); sorted lists."""
    members = sorted(set(ids))
    n, k = len(members), degree(len(set(ids)))
    if k >= n - 1:
        return {u: [v for v in members if v != u] for u in members}
    digest = hashlib.sha256(b"latentfl/secagg/v2/graph/" + seed).digest()
    ring = list(members)
    random.Random(digest).shuffle(ring)
    position = {u: i for i, u in enumerate(ring)}
    half = k // 2
    return {u: sorted(ring[(position[u] + d) % n] for d in range(-half, half + 1) if d)
            for u in members}


__all__ = [
    "COMPLETE_UP_TO",
    "LOG_FACTOR",
    "degree",
    "derive_key",
    "mask_stream",
    "neighbours",
    "pairwise_mask",
    "pairwise_seed",
    "self_mask",
]
