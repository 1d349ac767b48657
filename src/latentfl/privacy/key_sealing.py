"""Hand the CKKS secret context to each participant so only that participant can open it.

The secret context is sealed to the participant's enrolled CURVE key (Curve25519, the key in
``roster.toml`` and in its ``curve.key_secret``): an ephemeral X25519 key agreement with that
public key, HKDF-SHA256 to a one-time AES-256-GCM key, and the participant id, both public keys
and a format tag bound as associated data. Opening needs the participant's CURVE secret key; a
wrong key, a swapped id or a flipped bit fails the GCM tag and raises SecurityError.

Sealed file layout: ``MAGIC (8) | ephemeral public key (32) | nonce (12) | ciphertext+tag``.

Key folder layout (beside the CURVE/Ed25519 keys of ``latentfl keys``)::

    DIR/coordinator/ckks_public.bin           public context (no secret key), mode 0644
    DIR/participants/<id>/ckks_secret.enc     secret context sealed to <id>, mode 0600

The secret context exists in plaintext only in memory while the files are written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentfl.durable import write_atomic
from latentfl.errors import ConfigError, SecurityError
from latentfl.privacy.ckks import (
    DEFAULT_COEFF_MOD_BIT_SIZES,
    DEFAULT_POLY_MODULUS_DEGREE,
    DEFAULT_SCALE,
    create_context,
    load_context,
    public_context_bytes,
    secret_context_bytes,
)

MAGIC = b"LFLCKKS1"
PUBLIC_CONTEXT_FILE = "ckks_public.bin"
SEALED_CONTEXT_FILE = "ckks_secret.enc"
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


def write_ckks_keys(
    key_dir: str | Path,
    *,
    poly_modulus_degree: int = DEFAULT_POLY_MODULUS_DEGREE,
    coeff_mod_bit_sizes: Sequence[int] = DEFAULT_COEFF_MOD_BIT_SIZES,
    scale: float = DEFAULT_SCALE,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Make a CKKS context for the consortium in ``key_dir`` (made by ``latentfl keys``).

    Writes the public context for the coordinator and one sealed secret context per active
    participant of ``key_dir/roster.toml``; returns {party id: file written}.
    """
    from latentfl.platform.crypto import COORDINATOR_ID, ROSTER_FILE, load_roster

    key_dir = Path(key_dir)
    roster = load_roster(key_dir / ROSTER_FILE)
    ids = roster.active_ids()
    if not ids:
        raise ConfigError(f"roster {key_dir / ROSTER_FILE} has no active participant; enrol some.")
    targets = {COORDINATOR_ID: key_dir / COORDINATOR_ID / PUBLIC_CONTEXT_FILE}
    targets.update({pid: key_dir / "participants" / pid / SEALED_CONTEXT_FILE for pid in ids})
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"CKKS key files already exist ({existing[0]}, ...); a new context would make "
            "every older ciphertext unreadable: pass --force to replace them."
        )
    ctx = create_context(poly_modulus_degree, coeff_mod_bit_sizes, scale)
    write_atomic(targets[COORDINATOR_ID], public_context_bytes(ctx))
    targets[COORDINATOR_ID].chmod(0o644)
    secret = secret_context_bytes(ctx)
    for pid in ids:
        sealed = seal_secret_context(
            secret, participant_id=pid, curve_public=roster.participants[pid].curve_public
        )
        write_atomic(targets[pid], sealed, mode=0o600)
    return targets


def load_coordinator_context(coordinator_dir: str | Path) -> Any:
    """The coordinator's public context; SecurityError if missing or if it holds a secret key."""
    path = Path(coordinator_dir) / PUBLIC_CONTEXT_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecurityError(
            f"CKKS public context {path} cannot be read ({exc.strerror}); create it with "
            "`latentfl privacy ckks-keys DIR`."
        ) from None
    return load_context(data, private=False)


def load_participant_context(participant_dir: str | Path) -> Any:
    """This participant's secret context, opened with the CURVE key in its key folder."""
    from latentfl.platform.crypto import load_identity

    folder = Path(participant_dir)
    identity = load_identity(folder)
    path = folder / SEALED_CONTEXT_FILE
    try:
        sealed = path.read_bytes()
    except OSError as exc:
        raise SecurityError(
            f"sealed CKKS context {path} cannot be read ({exc.strerror}); create it with "
            "`latentfl privacy ckks-keys DIR` and copy it into the participant's key folder."
        ) from None
    secret = open_secret_context(
        sealed, participant_id=identity.id, curve_secret=identity.curve_secret
    )
    return load_context(secret, private=True)


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


__all__ = [
    "MAGIC",
    "PUBLIC_CONTEXT_FILE",
    "SEALED_CONTEXT_FILE",
    "load_coordinator_context",
    "load_participant_context",
    "open_secret_context",
    "seal_secret_context",
    "write_ckks_keys",
]
