"""Operations that change a consortium folder: create it, enrol and revoke participants.

Each is a read-modify-write of ``DIR/roster.toml`` under an exclusive lock on the folder, so two
``latentfl keys`` commands cannot interleave, and the roster is replaced atomically.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from latentfl.errors import ConfigError, SecurityError
from latentfl.platform.crypto._files import PRIVATE_DIR_MODE
from latentfl.platform.crypto.keys import (
    COORDINATOR_ID,
    check_participant_id,
    load_public_keys,
    write_key_folder,
)
from latentfl.platform.crypto.roster import (
    ROSTER_FILE,
    Roster,
    RosterEntry,
    load_roster,
    save_roster,
)

PARTICIPANTS_DIR = "participants"


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the consortium folder for one read-modify-write."""
    fd = os.open(directory / ".roster.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def init_consortium(directory: Path, participant_ids: Sequence[str]) -> Roster:
    """Create keys for the coordinator and each participant, and ``DIR/roster.toml``."""
    directory = Path(directory)
    ids = [check_participant_id(pid) for pid in participant_ids]
    duplicates = sorted({pid for pid in ids if ids.count(pid) > 1})
    if duplicates:
        raise ConfigError(
            f"participant ids {duplicates} are given more than once; expected unique ids"
        )
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(
            f"key directory {directory} is not empty; `keys init` never overwrites keys: "
            "choose a new directory, or use `latentfl keys add` to enrol more participants"
        )
    directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(directory, PRIVATE_DIR_MODE)
    with _locked(directory):
        coordinator = write_key_folder(directory / COORDINATOR_ID, COORDINATOR_ID)
        (directory / PARTICIPANTS_DIR).mkdir(mode=PRIVATE_DIR_MODE)
        os.chmod(directory / PARTICIPANTS_DIR, PRIVATE_DIR_MODE)
        participants = {}
        for pid in ids:
            ident = write_key_folder(directory / PARTICIPANTS_DIR / pid, pid)
            participants[pid] = RosterEntry(pid, ident.curve_public, ident.verify_key, "active")
        roster = Roster(coordinator.curve_public, coordinator.verify_key, participants)
        save_roster(directory / ROSTER_FILE, roster)
    return roster


def create_identity(folder: Path, pid: str) -> None:
    """Make one participant's key folder on its own host (``latentfl keys create``).

    The institution keeps the secret files and sends only ``curve.key`` and ``sign.key`` to the
    operator, who enrols them with ``add_participant(..., public_from=...)``.
    """
    folder = Path(folder)
    if folder.exists():
        raise ConfigError(f"key folder {folder} already exists; `keys create` never overwrites keys")
    folder.parent.mkdir(parents=True, exist_ok=True)
    write_key_folder(folder, check_participant_id(pid))


def add_participant(directory: Path, pid: str, *, public_from: Path | None = None) -> Roster:
    """Enrol ``pid``: with fresh keys made in ``DIR/participants/<pid>/``, or, given
    ``public_from``, with the public keys the institution sent (a folder holding its
    ``curve.key`` and ``sign.key``), so the operator never holds its secrets.

    A revoked id may be enrolled again with new keys (its old folder is removed): that is how a
    participant's keys are rotated. An active id is refused, as are keys enrolled for anyone else.
    """
    directory = Path(directory)
    check_participant_id(pid)
    with _locked(directory):
        roster = load_roster(directory / ROSTER_FILE)
        old = roster.participants.get(pid)
        if old is not None and old.active:
            raise ConfigError(
                f"participant {pid!r} is already enrolled and active; revoke it first to give it "
                "new keys"
            )
        folder = directory / PARTICIPANTS_DIR / pid
        if public_from is not None:
            key_id, curve_public, verify_key = load_public_keys(public_from)
            if key_id != pid:
                raise SecurityError(
                    f"public keys in {public_from} were made for {key_id!r}, not {pid!r}; "
                    "expected the keys of the participant being enrolled"
                )
        if folder.exists():
            shutil.rmtree(folder)
        if public_from is None:
            ident = write_key_folder(folder, pid)
            curve_public, verify_key = ident.curve_public, ident.verify_key
        participants = dict(roster.participants)
        participants[pid] = RosterEntry(pid, curve_public, verify_key, "active")
        roster = replace(roster, participants=participants)
        save_roster(directory / ROSTER_FILE, roster)  # refuses keys enrolled for another party
    return roster


def revoke_participant(directory: Path, pid: str) -> Roster:
    """Mark ``pid`` revoked in the roster (its keys stop being accepted); idempotent."""
    directory = Path(directory)
    with _locked(directory):
        roster = load_roster(directory / ROSTER_FILE)
        entry = roster.participants.get(pid)
        if entry is None:
            raise ConfigError(
                f"participant {pid!r} is not in roster {directory / ROSTER_FILE}; enrolled ids: "
                f"{sorted(roster.participants)}"
            )
        if entry.active:
            participants = dict(roster.participants)
            participants[pid] = replace(entry, status="revoked")
            roster = replace(roster, participants=participants)
            save_roster(directory / ROSTER_FILE, roster)
    return roster


__all__ = [
    "PARTICIPANTS_DIR",
    "add_participant",
    "create_identity",
    "init_consortium",
    "revoke_participant",
]
