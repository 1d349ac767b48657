"""Key folders: one per party, holding a CURVE pair (pyzmq certificates) and an Ed25519 pair.

A key folder (``DIR/coordinator/`` or ``DIR/participants/<id>/``, mode 0700) holds::

    curve.key          CURVE public certificate (pyzmq format; metadata ``id = <id>``)
    curve.key_secret   CURVE secret certificate, mode 0600
    sign.key           Ed25519 public key, 64 hex digits
    sign.key_secret    Ed25519 secret key, PKCS#8 PEM, mode 0600

CURVE keys are handled everywhere in their Z85 text form as ``bytes`` (40 bytes), which is what
pyzmq's certificate functions, its ZAP callback and the ``curve_*key`` socket options use.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from zmq.utils import z85

from latentfl.errors import ConfigError, SecurityError
from latentfl.platform.crypto._files import (
    PUBLIC_FILE_MODE,
    SECRET_FILE_MODE,
    make_private_dir,
    read_secret_file,
)
from latentfl.platform.crypto.signing import (
    SIGN_PUBLIC_FILE,
    SIGN_SECRET_FILE,
    load_signing_key,
    load_verify_key,
    verify_key_to_hex,
    write_signing_keys,
)

COORDINATOR_ID = "coordinator"
CURVE_NAME = "curve"
CURVE_PUBLIC_FILE = f"{CURVE_NAME}.key"
CURVE_SECRET_FILE = f"{CURVE_NAME}.key_secret"
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CERT_LINE = re.compile(r'^\s+(id|public-key|secret-key)\s*=\s*"?([^"\s]*)"?\s*$')


def check_participant_id(pid: str, *, role: str = "participant") -> str:
    """Return ``pid`` if it is a valid id for a participant (or an operator: ``role``), else
    raise ConfigError."""
    if not isinstance(pid, str) or not _ID_PATTERN.fullmatch(pid):
        raise ConfigError(
            f"{role} id {pid!r} is invalid; expected 1-64 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    if pid == COORDINATOR_ID:
        raise ConfigError(
            f"{role} id {pid!r} is reserved for the coordinator; choose another id"
        )
    return pid


def curve_key_from_text(text: str | bytes, *, where: str = "CURVE public key") -> bytes:
    """Normalise a CURVE key given as Z85 text (40 chars) or 32 raw bytes to Z85 ``bytes``."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    data = data.strip() if len(data) != 32 else data
    if len(data) == 32:
        return z85.encode(data)
    if len(data) == 40:
        try:
            if len(z85.decode(data)) == 32:
                return data
        except Exception:  # z85.decode raises several types on bad text
            pass
    shown = data[:60].decode("ascii", "replace")
    raise SecurityError(f"{where} is {shown!r}; expected 40 Z85 characters (a CURVE key)")


def curve_fingerprint(key: bytes) -> str:
    """A short, log-safe name for a CURVE public key: 16 hex digits of the SHA-256 of its Z85."""
    return hashlib.sha256(curve_key_from_text(key)).hexdigest()[:16]


@dataclass(frozen=True)
class Identity:
    """One party's own keys, loaded from its key folder."""

    id: str
    curve_public: bytes
    curve_secret: bytes
    signing_key: Ed25519PrivateKey
    verify_key: Ed25519PublicKey

    def __repr__(self) -> str:  # never print secrets
        return f"Identity(id={self.id!r}, curve_public={self.curve_public.decode()!r})"


def write_key_folder(folder: Path, party_id: str) -> Identity:
    """Create ``folder`` (0700) with fresh CURVE and Ed25519 key pairs for ``party_id``."""
    make_private_dir(folder)
    # The folder is 0700 before pyzmq writes the secret certificate, so there is no window in
    # which another user could read it; its mode is tightened to 0600 right after.
    public_file, secret_file = zmq.auth.create_certificates(
        folder, CURVE_NAME, metadata={"id": party_id}
    )
    Path(secret_file).chmod(SECRET_FILE_MODE)
    # pyzmq writes metadata into the secret certificate only; the public one names its owner too,
    # so an operator enrolling keys an institution sent can check whose they are.
    public_text = Path(public_file).read_text(encoding="utf-8")
    Path(public_file).write_text(
        public_text.replace("\nmetadata\n", f"\nmetadata\n    id = {party_id}\n", 1),
        encoding="utf-8",
    )
    Path(public_file).chmod(PUBLIC_FILE_MODE)
    write_signing_keys(folder)
    return load_identity(folder)


def _read_certificate(path: Path, *, secret: bool) -> dict[str, str]:
    """Parse a pyzmq certificate file into its ``id``, ``public-key`` and ``secret-key`` values."""
    if secret:
        raw = read_secret_file(path)
    else:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SecurityError(f"CURVE certificate {path} cannot be read ({exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecurityError(f"CURVE certificate {path} is not UTF-8 text") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _CERT_LINE.match(line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def load_identity(directory: Path) -> Identity:
    """Load a key folder (a participant's or the coordinator's); SecurityError if unusable."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SecurityError(
            f"key folder {directory} does not exist; expected a folder made by `latentfl keys`"
        )
    secret_cert = _read_certificate(directory / CURVE_SECRET_FILE, secret=True)
    public_cert = _read_certificate(directory / CURVE_PUBLIC_FILE, secret=False)
    where = directory / CURVE_SECRET_FILE
    if "public-key" not in secret_cert or "secret-key" not in secret_cert:
        raise SecurityError(f"CURVE certificate {where} lacks a public-key or secret-key line")
    curve_public = curve_key_from_text(secret_cert["public-key"], where=f"public-key in {where}")
    curve_secret = curve_key_from_text(secret_cert["secret-key"], where=f"secret-key in {where}")
    if zmq.curve_public(curve_secret) != curve_public:
        raise SecurityError(
            f"CURVE certificate {where} holds a secret key that does not match its public key"
        )
    if public_cert.get("public-key", "").encode("ascii") != curve_public:
        raise SecurityError(
            f"CURVE certificates in {directory} disagree: {CURVE_PUBLIC_FILE} and "
            f"{CURVE_SECRET_FILE} hold different public keys"
        )
    party_id = secret_cert.get("id")
    if not party_id or public_cert.get("id", party_id) != party_id:
        raise SecurityError(
            f"CURVE certificates in {directory} name owners {secret_cert.get('id')!r} and "
            f"{public_cert.get('id')!r}; expected one id in both"
        )
    if party_id != COORDINATOR_ID:
        check_participant_id(party_id)
    signing_key = load_signing_key(directory / SIGN_SECRET_FILE)
    verify_key = load_verify_key(directory / SIGN_PUBLIC_FILE)
    if verify_key_to_hex(signing_key.public_key()) != verify_key_to_hex(verify_key):
        raise SecurityError(
            f"signing keys in {directory} disagree: {SIGN_PUBLIC_FILE} is not the public half "
            f"of {SIGN_SECRET_FILE}"
        )
    return Identity(
        id=party_id,
        curve_public=curve_public,
        curve_secret=curve_secret,
        signing_key=signing_key,
        verify_key=verify_key,
    )


def load_public_keys(directory: Path) -> tuple[str, bytes, Ed25519PublicKey]:
    """(id, CURVE public key, signing public key) from a folder's public files only.

    This is what an institution that made its own keys sends the operator: ``curve.key`` and
    ``sign.key``, never the secret files.
    """
    directory = Path(directory)
    cert = _read_certificate(directory / CURVE_PUBLIC_FILE, secret=False)
    where = directory / CURVE_PUBLIC_FILE
    if "public-key" not in cert or "id" not in cert:
        raise SecurityError(f"CURVE certificate {where} lacks its public-key or id line")
    curve_public = curve_key_from_text(cert["public-key"], where=f"public-key in {where}")
    return cert["id"], curve_public, load_verify_key(directory / SIGN_PUBLIC_FILE)


__all__ = [
    "COORDINATOR_ID",
    "CURVE_PUBLIC_FILE",
    "CURVE_SECRET_FILE",
    "Identity",
    "check_participant_id",
    "curve_fingerprint",
    "curve_key_from_text",
    "load_identity",
    "load_public_keys",
    "write_key_folder",
]
