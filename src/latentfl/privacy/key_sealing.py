"""Hand the CKKS secret context to each participant so only that participant can open it.

The secret context is sealed to the participant's enrolled CURVE key (Curve25519, the key in
``roster.toml`` and in its ``curve.key_secret``): an ephemeral X25519 key agreement with that
public key, HKDF-SHA256 to a one-time AES-256-GCM key, and the participant id, both public keys
and a format tag bound as associated data. Opening needs the participant's CURVE secret key; a
wrong key, a swapped id or a flipped bit fails the GCM tag and raises SecurityError.

Sealed file layout: ``MAGIC (8) | ephemeral public key (32) | nonce (12) | ciphertext+tag``.

These functions take keys and bytes as arguments and touch no file: where the contexts live
in a consortium's key folders (``write_ckks_keys``, ``load_participant_context``) is the
platform's business, in :mod:`latentfl.platform.crypto.ckks_keys`.
"""

from __future__ import annotations

import os

from latentfl.errors import SecurityError

MAGIC = b"LFLCKKS1"
_INFO = b"latentfl ckks secret context v1"


def seal_secret_context(
    secret_context: bytes, *, participant_id: str, curve_public: bytes
) -> bytes:
    """``secret_context`` encrypted to the holder of ``curve_public`` (Z85 text or 32 bytes)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    recipient = _raw_key(curve_public, "participant CURVE public key")
    ephemeral = X25519PrivateKey.generate()
    eph_public = _public_bytes(ephemeral.public_key())
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    key = _derive(shared, eph_public, recipient)
    nonce = os.urandom(12)
    aad = _aad(participant_id, eph_public, recipient)
    return MAGIC + eph_public + nonce + AESGCM(key).encrypt(nonce, secret_context, aad)


def open_secret_context(sealed: bytes, *, participant_id: str, curve_secret: bytes) -> bytes:
    """The secret context sealed to this participant; SecurityError for any other key or id."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(sealed) < 8 + 32 + 12 + 16 or sealed[:8] != MAGIC:
        raise SecurityError(
            f"sealed CKKS context ({len(sealed)} bytes) does not start with {MAGIC!r}; expected "
            "a file written by `latentfl privacy ckks-keys`."
        )
    eph_public, nonce, body = sealed[8:40], sealed[40:52], sealed[52:]
    own = X25519PrivateKey.from_private_bytes(_raw_key(curve_secret, "CURVE secret key"))
    own_public = _public_bytes(own.public_key())
    key = _derive(
        own.exchange(X25519PublicKey.from_public_bytes(eph_public)), eph_public, own_public
    )
    try:
        return AESGCM(key).decrypt(nonce, body, _aad(participant_id, eph_public, own_public))
    except InvalidTag:
        raise SecurityError(
            f"sealed CKKS context does not open for participant {participant_id!r} with its "
            "CURVE key; it was sealed to another participant or has been altered."
        ) from None


def _derive(shared: bytes, eph_public: bytes, recipient: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_public + recipient, info=_INFO)
    return hkdf.derive(shared)


def _aad(participant_id: str, eph_public: bytes, recipient: bytes) -> bytes:
    return MAGIC + participant_id.encode("utf-8") + b"\x00" + eph_public + recipient


def _public_bytes(public_key) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_key(key: bytes | str, what: str) -> bytes:
    """A CURVE key as 32 raw bytes from Z85 text (pyzmq's form) or raw bytes."""
    from zmq.utils import z85

    data = key.encode("ascii") if isinstance(key, str) else bytes(key)
    if len(data) == 32:
        return data
    if len(data) == 40:
        try:
            raw = z85.decode(data)
        except Exception:  # noqa: BLE001 - z85.decode raises several types on bad text
            raw = b""
        if len(raw) == 32:
            return raw
    raise SecurityError(f"{what} has {len(data)} bytes; expected 40 Z85 characters or 32 bytes.")


__all__ = ["MAGIC", "open_secret_context", "seal_secret_context"]
