"""Where a consortium's CKKS contexts live in its key folders, and how they are made and opened.

Layout (beside the CURVE/Ed25519 keys of ``latentfl keys``)::

    DIR/coordinator/ckks_public.bin           public context (no secret key), mode 0644
    DIR/participants/<id>/ckks_secret.enc     secret context sealed to <id>, mode 0600

The sealing itself (:mod:`latentfl.privacy.key_sealing`) takes keys as arguments; this module
reads them from the roster and the key folders. The secret context exists in plaintext only in
memory while the files are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentfl.durable import write_atomic
from latentfl.errors import ConfigError, SecurityError
from latentfl.platform.crypto.keys import COORDINATOR_ID, load_identity
from latentfl.platform.crypto.roster import ROSTER_FILE, load_roster
from latentfl.privacy.ckks import (
    DEFAULT_COEFF_MOD_BIT_SIZES,
    DEFAULT_POLY_MODULUS_DEGREE,
    DEFAULT_SCALE,
    create_context,
    load_context,
    public_context_bytes,
    secret_context_bytes,
)
from latentfl.privacy.key_sealing import open_secret_context, seal_secret_context

PUBLIC_CONTEXT_FILE = "ckks_public.bin"
SEALED_CONTEXT_FILE = "ckks_secret.enc"


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


def load_public_context(path: str | Path) -> Any:
    """A public CKKS context file; SecurityError if unreadable or if it holds a secret key."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecurityError(
            f"CKKS public context {path} cannot be read ({exc.strerror}); create it with "
            "`latentfl privacy ckks-keys DIR`."
        ) from None
    return load_context(data, private=False)


def load_coordinator_context(coordinator_dir: str | Path) -> Any:
    """The coordinator's public context in its key folder (see :func:`load_public_context`)."""
    return load_public_context(Path(coordinator_dir) / PUBLIC_CONTEXT_FILE)


def load_participant_context(participant_dir: str | Path) -> Any:
    """This participant's secret context, opened with the CURVE key in its key folder."""
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


__all__ = [
    "PUBLIC_CONTEXT_FILE",
    "SEALED_CONTEXT_FILE",
    "load_coordinator_context",
    "load_participant_context",
    "load_public_context",
    "write_ckks_keys",
]
