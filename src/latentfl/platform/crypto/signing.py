"""Ed25519 signing keys: generation, files, hex encoding of public keys, sign and verify."""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from latentfl.errors import SecurityError
from latentfl.platform.crypto._files import (
    PUBLIC_FILE_MODE,
    SECRET_FILE_MODE,
    read_secret_file,
    write_new_file,
)

SIGNATURE_BYTES = 64
SIGN_PUBLIC_FILE = "sign.key"
SIGN_SECRET_FILE = "sign.key_secret"


def verify_key_to_hex(key: Ed25519PublicKey) -> str:
    """The 32 raw bytes of a public key as 64 lowercase hex digits (the roster's form)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def verify_key_from_hex(text: str, *, where: str = "public signing key") -> Ed25519PublicKey:
    """Parse 64 hex digits into an Ed25519 public key; SecurityError naming ``where`` if bad."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise SecurityError(
            f"{where} is {text[:80]!r}; expected 64 hex digits (an Ed25519 public key)"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def write_signing_keys(folder: Path) -> Ed25519PrivateKey:
    """Generate an Ed25519 key pair into ``folder``: PEM secret (0600) and hex public (0644)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new_file(folder / SIGN_SECRET_FILE, pem, SECRET_FILE_MODE)
    public_hex = verify_key_to_hex(key.public_key()) + "\n"
    write_new_file(folder / SIGN_PUBLIC_FILE, public_hex.encode("ascii"), PUBLIC_FILE_MODE)
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load a PEM Ed25519 secret key, refusing a file readable by group or others."""
    data = read_secret_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SecurityError(
            f"signing key file {path} is not an unencrypted PEM private key ({exc})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SecurityError(
            f"signing key file {path} holds a {type(key).__name__}; expected an Ed25519 key"
        )
    return key


def load_verify_key(path: Path) -> Ed25519PublicKey:
    """Load a public signing key file (64 hex digits)."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityError(f"public signing key file {path} cannot be read ({exc})") from None
    return verify_key_from_hex(text, where=f"public signing key in {path}")


def sign(signing_key: Ed25519PrivateKey, data: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``data``."""
    return signing_key.sign(data)


def verify(verify_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``data`` by ``verify_key``."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        verify_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


__all__ = [
    "SIGNATURE_BYTES",
    "SIGN_PUBLIC_FILE",
    "SIGN_SECRET_FILE",
    "load_signing_key",
    "load_verify_key",
    "sign",
    "verify",
    "verify_key_from_hex",
    "verify_key_to_hex",
    "write_signing_keys",
]
