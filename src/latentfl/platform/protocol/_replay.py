"""Durable replay refusal: every (sender, nonce) accepted within the timestamp window is remembered.

The file is append-only text, one ``<timestamp> <sender> <nonce>`` line per message, written
(and by default fsynced) before the message counts as seen, so a restarted daemon still refuses
a replay. ``fsync=False`` still survives a killed process (the line is in the kernel's page cache)
but not a power loss until :meth:`ReplayGuard.sync` (the coordinator's group commit calls it once
per group of updates); it lifts the ~5 ms-per-message fsync cost. A nonce whose
timestamp is older than the window may be forgotten: the timestamp check refuses such a message
anyway. The file is compacted (atomically) when most of its lines have expired.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from pathlib import Path

from latentfl.errors import StateError
from latentfl.platform.crypto._files import SECRET_FILE_MODE, fsync_dir, write_atomic

_COMPACT_EVERY = 4096
_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class ReplayGuard:
    """Remembers (sender, nonce) pairs, durably when given a ``path``, for ``window_s`` seconds."""

    def __init__(
        self, path: Path | None = None, *, window_s: float = 300.0, fsync: bool = True
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s is {window_s}; expected a positive number of seconds")
        self.path = Path(path) if path is not None else None
        self.window_s = float(window_s)
        self.fsync = fsync
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._file_lines = 0
        self._adds_since_prune = 0
        self._fd: int | None = None
        if self.path is not None:
            self._load(self.path)

    def _load(self, path: Path) -> None:
        lines: list[bytes] = []
        if path.exists():
            lines = path.read_bytes().split(b"\n")
        # The last piece is empty, or a line cut short by a crash mid-append (so the message it
        # guarded was never accepted): either way it is dropped.
        for number, line in enumerate(lines[:-1], start=1):
            self._remember(line, path, number)
        self._file_lines = len(self._seen)
        self._prune(time.time())
        # Rewrite without expired entries and without any torn tail, then append from there.
        self._compact()

    def _remember(self, line: bytes, path: Path, number: int) -> None:
        parts = line.split(b" ")
        try:
            if len(parts) != 3:
                raise ValueError
            timestamp = float(parts[0])
            sender, nonce = parts[1].decode("ascii"), parts[2].decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise StateError(
                f"replay guard file {path} line {number} is {line[:80]!r}; expected "
                "'<timestamp> <sender> <nonce>' (move the file aside only if you accept that "
                "recent messages could be replayed)"
            ) from None
        self._seen[(sender, nonce)] = timestamp

    def seen_or_add(self, sender: str, nonce: str, timestamp: float) -> bool:
        """True if (sender, nonce) was seen; else record it (durably) and return False."""
        if not (_TOKEN.fullmatch(sender) and _TOKEN.fullmatch(nonce) and math.isfinite(timestamp)):
            raise ValueError(f"cannot record sender {sender!r} nonce {nonce!r} at {timestamp!r}")
        with self._lock:
            key = (sender, nonce)
            if key in self._seen:
                return True
            if self.path is not None:
                self._append(f"{timestamp!r} {sender} {nonce}\n".encode("ascii"))
            self._seen[key] = timestamp
            self._adds_since_prune += 1
            if self._adds_since_prune >= _COMPACT_EVERY:
                self._prune(time.time())
                if self.path is not None and len(self._seen) * 2 < self._file_lines:
                    self._compact()
            return False

    def _append(self, line: bytes) -> None:
        assert self._fd is not None
        os.write(self._fd, line)
        if self.fsync:
            os.fsync(self._fd)
        self._file_lines += 1

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        self._seen = {k: ts for k, ts in self._seen.items() if ts >= horizon}
        self._adds_since_prune = 0

    def _compact(self) -> None:
        assert self.path is not None
        if self._fd is not None:
            os.close(self._fd)
        text = "".join(f"{ts!r} {s} {n}\n" for (s, n), ts in self._seen.items())
        write_atomic(self.path, text.encode("ascii"), SECRET_FILE_MODE)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        fsync_dir(self.path.parent)
        self._file_lines = len(self._seen)

    def sync(self) -> None:
        """fsync what was appended (with ``fsync=False``, call it before acting on a group)."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)

    @property
    def remembered(self) -> int:
        """How many (sender, nonce) pairs are currently remembered."""
        return len(self._seen)

    def close(self) -> None:
        """Close the file; the guard must not be used afterwards."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


__all__ = ["ReplayGuard"]
