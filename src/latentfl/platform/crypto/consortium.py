"""Operations that change a consortium folder: create it, enrol and revoke participants and
operators (``DIR/participants/<id>/``, ``DIR/operators/<id>/``).

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
    Role,
    Roster,
    RosterEntry,
    load_roster,
    save_roster,
)

PARTICIPANTS_DIR = "participants"
OPERATORS_DIR = "operators"
_FOLDERS: dict[Role, str] = {"participant": PARTICIPANTS_DIR, "operator": OPERATORS_DIR}


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the consortium folder for one read-modify-write."""
    fd = os.open(directory / ".roster.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def init_consortium(directory: Path, participant_ids: Sequence[str],
                    operator_ids: Sequence[str] = ()) -> Roster:
    """Create keys for the coordinator, each participant and each operator, and
    ``DIR/roster.toml``."""
    directory = Path(directory)
    ids = [check_participant_id(pid) for pid in participant_ids]
    ops = [check_participant_id(oid, role="operator") for oid in operator_ids]
    every = ids + ops
    duplicates = sorted({pid for pid in every if every.count(pid) > 1})
    if duplicates:
        raise ConfigError(
            f"ids {duplicates} are given more than once; expected unique ids across participants "
            "and operators"
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
        enrolled: dict[Role, dict[str, RosterEntry]] = {"participant": {}, "operator": {}}
        for role, role_ids in (("participant", ids), ("operator", ops)):
            if not role_ids and role == "operator":
                continue
            (directory / _FOLDERS[role]).mkdir(mode=PRIVATE_DIR_MODE)
            os.chmod(directory / _FOLDERS[role], PRIVATE_DIR_MODE)
            for pid in role_ids:
                ident = write_key_folder(directory / _FOLDERS[role] / pid, pid)
                enrolled[role][pid] = RosterEntry(pid, ident.curve_public, ident.verify_key)
        roster = Roster(coordinator.curve_public, coordinator.verify_key,
                        enrolled["participant"], enrolled["operator"])
        save_roster(directory / ROSTER_FILE, roster)
    return roster


def create_identity(folder: Path, pid: str) -> None:
    """Make one participant's (or operator's) key folder on its own host (``latentfl keys
    create``).

    The institution (or operator) keeps the secret files and sends only ``curve.key`` and
    ``sign.key`` to whoever holds the consortium folder, who enrols them with
    ``add_participant`` / ``add_operator(..., public_from=...)``.
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
    return _enrol(Path(directory), pid, "participant", public_from)


def add_operator(directory: Path, oid: str, *, public_from: Path | None = None) -> Roster:
    """Enrol operator ``oid`` (``latentfl admin``), as :func:`add_participant` enrols a
    participant: fresh keys in ``DIR/operators/<oid>/``, or the public keys in ``public_from``."""
    return _enrol(Path(directory), oid, "operator", public_from)


def _table(roster: Roster, role: Role) -> dict[str, RosterEntry]:
    return roster.participants if role == "participant" else roster.operators


def _enrol(directory: Path, pid: str, role: Role, public_from: Path | None) -> Roster:
    check_participant_id(pid, role=role)
    with _locked(directory):
        roster = load_roster(directory / ROSTER_FILE)
        other: Role = "operator" if role == "participant" else "participant"
        if pid in _table(roster, other):
            raise ConfigError(
                f"{pid!r} is enrolled as {other}; an id names one party, choose another id for "
                f"the {role}"
            )
        old = _table(roster, role).get(pid)
        if old is not None and old.active:
            raise ConfigError(
                f"{role} {pid!r} is already enrolled and active; revoke it first to give it "
                "new keys"
            )
        folder = directory / _FOLDERS[role] / pid
        if public_from is not None:
            key_id, curve_public, verify_key = load_public_keys(public_from)
            if key_id != pid:
                raise SecurityError(
                    f"public keys in {public_from} were made for {key_id!r}, not {pid!r}; "
                    f"expected the keys of the {role} being enrolled"
                )
        if folder.exists():
            shutil.rmtree(folder)
        if public_from is None:
            folder.parent.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
            ident = write_key_folder(folder, pid)
            curve_public, verify_key = ident.curve_public, ident.verify_key
        entries = dict(_table(roster, role))
        entries[pid] = RosterEntry(pid, curve_public, verify_key, "active")
        roster = replace(roster, **{_FOLDERS[role]: entries})
        # refuses an id taken by the other role and keys enrolled for another party
        save_roster(directory / ROSTER_FILE, roster)
    return roster


def revoke_participant(directory: Path, pid: str) -> Roster:
    """Mark ``pid`` revoked in the roster (its keys stop being accepted); idempotent."""
    return _revoke(Path(directory), pid, "participant")


def revoke_operator(directory: Path, oid: str) -> Roster:
    """Mark operator ``oid`` revoked in the roster (its keys stop being accepted); idempotent."""
    return _revoke(Path(directory), oid, "operator")


def _revoke(directory: Path, pid: str, role: Role) -> Roster:
    with _locked(directory):
        roster = load_roster(directory / ROSTER_FILE)
        entry = _table(roster, role).get(pid)
        if entry is None:
            raise ConfigError(
                f"{role} {pid!r} is not in roster {directory / ROSTER_FILE}; enrolled {role}s: "
                f"{sorted(_table(roster, role))}"
            )
        if entry.active:
            entries = dict(_table(roster, role))
            entries[pid] = replace(entry, status="revoked")
            roster = replace(roster, **{_FOLDERS[role]: entries})
            save_roster(directory / ROSTER_FILE, roster)
    return roster


__all__ = [
    "OPERATORS_DIR",
    "PARTICIPANTS_DIR",
    "add_operator",
    "add_participant",
    "create_identity",
    "init_consortium",
    "revoke_operator",
    "revoke_participant",
]
