"""The roster file as the coordinator sees it: reloaded when it changes on disk.

Operators enrol and revoke participants by editing the roster (``latentfl keys add|revoke``);
the daemon polls :meth:`RosterWatcher.poll` (and forces it on SIGHUP). The watcher only reads
and compares; what a change means for sockets, rounds and the journal is the daemon's business.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from latentfl.platform.crypto import Roster, load_roster


@dataclass(frozen=True)
class RosterChange:
    """A newly loaded roster and the parties (participants or operators) it no longer lists as
    active."""

    roster: Roster
    revoked: list[str]


class RosterWatcher:
    """Reloads ``path`` when its inode, modification time or size changes."""

    def __init__(self, path: Path, roster: Roster) -> None:
        self.path = path
        self.roster = roster
        self._stamp = self._read_stamp()

    def poll(self, *, force: bool = False) -> RosterChange | None:
        """The change since the last good roster, or None when the file is unchanged.

        A file that cannot be read or parsed raises the loader's error and the last good
        roster stays in force; the same broken file is not reported again until it changes.
        """
        stamp = self._read_stamp()
        if not force and stamp == self._stamp:
            return None
        self._stamp = stamp
        roster = load_roster(self.path)
        revoked = sorted(_active(self.roster) - _active(roster))
        self.roster = roster
        return RosterChange(roster, revoked)

    def _read_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)


def _active(roster: Roster) -> set[str]:
    return {*roster.active_ids(), *roster.active_operator_ids()}


__all__ = ["RosterChange", "RosterWatcher"]
