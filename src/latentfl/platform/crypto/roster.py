"""The consortium roster: which CURVE and signing keys are enrolled, and which are revoked.

Two roles are enrolled: ``[[participants]]`` (institutions that train) and ``[[operators]]``
(people who steer the coordinator remotely with ``latentfl admin``). Both connect over the same
CURVE endpoint; ids are unique across both roles, so a ZAP User-Id names one party and its
role, and the coordinator lets each role send only its own message kinds.

``DIR/roster.toml`` is public data (only public keys) and the coordinator's allow-list, so it is
refused when group or others may write it, and written only atomically (temp file, fsync,
rename). ``consortium`` holds the operations that change it.
"""

from __future__ import annotations

import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from latentfl.errors import ConfigError, SecurityError
from latentfl.platform.crypto._files import PUBLIC_FILE_MODE, write_atomic
from latentfl.platform.crypto.keys import COORDINATOR_ID, check_participant_id, curve_key_from_text
from latentfl.platform.crypto.signing import verify_key_from_hex, verify_key_to_hex

ROSTER_FILE = "roster.toml"
ROSTER_FORMAT = 1
Status = Literal["active", "revoked"]
_STATUSES = ("active", "revoked")
_ENTRY_KEYS = {"id", "curve_public", "sign_public", "status"}
Role = Literal["participant", "operator"]
_TABLES: dict[Role, str] = {"participant": "participants", "operator": "operators"}


@dataclass(frozen=True)
class RosterEntry:
    """One enrolled party (a participant or an operator): its id, public keys and status."""

    id: str
    curve_public: bytes
    verify_key: Ed25519PublicKey
    status: Status = "active"

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True)
class Roster:
    """The coordinator's public keys and every participant and operator ever enrolled (active
    or revoked)."""

    coordinator_curve_public: bytes
    coordinator_sign_public: Ed25519PublicKey
    participants: dict[str, RosterEntry] = field(default_factory=dict)
    operators: dict[str, RosterEntry] = field(default_factory=dict)

    def active_ids(self) -> list[str]:
        """Ids of the participants currently allowed to connect, in enrolment order."""
        return [pid for pid, entry in self.participants.items() if entry.active]

    def active_operator_ids(self) -> list[str]:
        """Ids of the operators currently allowed to connect, in enrolment order."""
        return [oid for oid, entry in self.operators.items() if entry.active]

    def entries(self) -> list[RosterEntry]:
        """Every participant's and operator's entry (active or revoked)."""
        return [*self.participants.values(), *self.operators.values()]

    def by_curve_key(self, key: bytes) -> RosterEntry | None:
        """The entry (active or revoked, of either role) enrolled with this CURVE key (Z85 or
        raw), if any."""
        try:
            key = curve_key_from_text(key)
        except SecurityError:
            return None
        for entry in self.entries():
            if entry.curve_public == key:
                return entry
        return None

    def verify_keys(self) -> dict[str, Ed25519PublicKey]:
        """Signing keys of the active participants, by id."""
        return {e.id: e.verify_key for e in self.participants.values() if e.active}

    def operator_keys(self) -> dict[str, Ed25519PublicKey]:
        """Signing keys of the active operators, by id."""
        return {e.id: e.verify_key for e in self.operators.values() if e.active}


def _quote(value: str) -> str:
    # Every value written is an id, Z85 key, hex key or status: printable ASCII only; escape
    # the two characters TOML basic strings need anyway.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def roster_to_toml(roster: Roster) -> str:
    """The canonical TOML text of a roster."""
    lines = [
        "# latentfl consortium roster: the public keys enrolled in this consortium.",
        "# Public data, safe to share. Change it with `latentfl keys add|revoke DIR ID`.",
        f"format = {ROSTER_FORMAT}",
        "",
        "[coordinator]",
        f"curve_public = {_quote(roster.coordinator_curve_public.decode('ascii'))}",
        f"sign_public = {_quote(verify_key_to_hex(roster.coordinator_sign_public))}",
    ]
    for table, entries in (("participants", roster.participants), ("operators", roster.operators)):
        for entry in entries.values():
            lines += [
                "",
                f"[[{table}]]",
                f"id = {_quote(entry.id)}",
                f"curve_public = {_quote(entry.curve_public.decode('ascii'))}",
                f"sign_public = {_quote(verify_key_to_hex(entry.verify_key))}",
                f"status = {_quote(entry.status)}",
            ]
    return "\n".join(lines) + "\n"


def _require_str(table: dict, key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} is {value!r}; expected a string")
    return value


def _parse_roster(data: dict, path: Path) -> Roster:
    unknown = set(data) - {"format", "coordinator", *_TABLES.values()}
    if unknown:
        raise ConfigError(f"roster {path} has unknown keys {sorted(unknown)}")
    if data.get("format") != ROSTER_FORMAT:
        raise ConfigError(
            f"roster {path}: format is {data.get('format')!r}; expected {ROSTER_FORMAT}"
        )
    coordinator = data.get("coordinator")
    if not isinstance(coordinator, dict) or set(coordinator) != {"curve_public", "sign_public"}:
        raise ConfigError(
            f"roster {path}: [coordinator] must hold exactly curve_public and sign_public"
        )
    where = f"roster {path} [coordinator]"
    coord_curve = curve_key_from_text(
        _require_str(coordinator, "curve_public", where), where=f"{where} curve_public"
    )
    coord_sign = verify_key_from_hex(
        _require_str(coordinator, "sign_public", where), where=f"{where} sign_public"
    )
    # keys and ids already taken, across the coordinator and both roles
    seen: dict[str, dict] = {
        "CURVE": {coord_curve: COORDINATOR_ID},
        "signing": {verify_key_to_hex(coord_sign): COORDINATOR_ID},
        "id": {},
    }
    participants = _parse_entries(data, "participant", path, seen)
    operators = _parse_entries(data, "operator", path, seen)
    return Roster(coord_curve, coord_sign, participants, operators)


def _parse_entries(data: dict, role: Role, path: Path,
                   seen: dict[str, dict]) -> dict[str, RosterEntry]:
    """The ``[[participants]]`` or ``[[operators]]`` tables, each checked."""
    name = _TABLES[role]
    tables = data.get(name, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"roster {path}: {name} must be [[{name}]] tables")
    entries: dict[str, RosterEntry] = {}
    for index, table in enumerate(tables):
        where = f"roster {path} {role} #{index + 1}"
        if set(table) != _ENTRY_KEYS:
            raise ConfigError(
                f"{where} has keys {sorted(table)}; expected exactly {sorted(_ENTRY_KEYS)}"
            )
        pid = check_participant_id(_require_str(table, "id", where), role=role)
        where = f"roster {path} {role} {pid!r}"
        status = _require_str(table, "status", where)
        if status not in _STATUSES:
            raise ConfigError(f"{where}: status is {status!r}; expected 'active' or 'revoked'")
        curve = curve_key_from_text(
            _require_str(table, "curve_public", where), where=f"{where} curve_public"
        )
        sign_hex = _require_str(table, "sign_public", where)
        verify_key = verify_key_from_hex(sign_hex, where=f"{where} sign_public")
        if pid in seen["id"]:
            raise SecurityError(f"{where} is enrolled twice (also as {seen['id'][pid]}); "
                                "expected each id once across participants and operators")
        seen["id"][pid] = role
        for kind, key in (("CURVE", curve), ("signing", sign_hex.lower())):
            if key in seen[kind]:
                raise SecurityError(
                    f"{where} has the same {kind} key as {seen[kind][key]!r}; "
                    "every party needs its own keys"
                )
            seen[kind][key] = pid
        entries[pid] = RosterEntry(pid, curve, verify_key, status)  # type: ignore[arg-type]
    return entries


def load_roster(path: Path) -> Roster:
    """Read and check a roster file; ConfigError for a bad file, SecurityError for bad keys."""
    path = Path(path)
    try:
        info = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"roster {path} does not exist; create one with `latentfl keys init`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"roster {path} cannot be read ({exc})") from None
    if stat.S_IMODE(info.st_mode) & 0o022:
        raise SecurityError(
            f"roster {path} has mode {stat.S_IMODE(info.st_mode):04o}, so group or others may "
            f"change who is enrolled; expected 0644 or stricter: run `chmod 644 {path}`"
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"roster {path} is not valid TOML ({exc})") from None
    return _parse_roster(data, path)


def check_roster(roster: Roster, path: Path) -> Roster:
    """Run every load-time check on an in-memory roster (duplicate ids or keys, bad values)."""
    return _parse_roster(tomllib.loads(roster_to_toml(roster)), path)


def save_roster(path: Path, roster: Roster) -> None:
    """Check ``roster``, then write it to ``path`` atomically (temp, fsync, rename), mode 0644."""
    check_roster(roster, Path(path))
    write_atomic(Path(path), roster_to_toml(roster).encode("ascii"), PUBLIC_FILE_MODE)


__all__ = [
    "ROSTER_FILE",
    "Role",
    "Roster",
    "RosterEntry",
    "check_roster",
    "load_roster",
    "roster_to_toml",
    "save_roster",
]
