"""Append-only, hash-chained journal of every accepted and refused message.

One JSON object per line. Each entry carries ``seq`` (0, 1, 2, ...), ``prev`` (the previous
entry's ``hash``; 64 zeros for the first) and ``hash`` = SHA-256 of the entry's canonical JSON
without ``hash``. Changing, removing or reordering any line breaks the chain at that line, which
:func:`verify_journal` reports. Each append is flushed and fsynced before the caller acts on it
(an ACK is only sent after its journal line and its update file are on disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from latentfl.errors import StateError

GENESIS = "0" * 64


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def verify_journal(path: Path) -> int:
    """Check the whole chain of ``path``; return the number of entries or raise StateError."""
    prev, seq = GENESIS, 0
    with Path(path).open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                entry = json.loads(raw)
            except ValueError:
                raise StateError(f"journal {path} line {lineno} is not JSON; the journal was "
                                 "damaged or edited.") from None
            if not isinstance(entry, dict):
                raise StateError(f"journal {path} line {lineno} is not a JSON object.")
            if entry.get("seq") != seq or entry.get("prev") != prev:
                raise StateError(f"journal {path} line {lineno} breaks the chain (seq "
                                 f"{entry.get('seq')!r}, expected {seq}); a line was removed, "
                                 "reordered or inserted.")
            if entry.get("hash") != _entry_hash(entry):
                raise StateError(f"journal {path} line {lineno} (seq {seq}) does not match its "
                                 "hash; the entry was edited.")
            prev, seq = entry["hash"], seq + 1
    return seq


class Journal:
    """The coordinator's journal file, opened for appending."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self.seq = verify_journal(self.path) if self.path.exists() else 0
        self.prev = self._last_hash()
        self._fh = self.path.open("ab")

    def _drop_torn_tail(self) -> None:
        """A crash mid-append leaves a last line without newline: it was never acted on."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())

    def _last_hash(self) -> str:
        if self.seq == 0:
            return GENESIS
        with self.path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            last = fh.read().splitlines()[-1]
        return json.loads(last)["hash"]

    def append(self, event: str, *, durable: bool = True, **fields: Any) -> dict[str, Any]:
        """Write one entry and return it; fsynced unless ``durable`` is false (heartbeats: the
        next durable entry, or the OS, flushes them)."""
        entry: dict[str, Any] = {"seq": self.seq, "prev": self.prev, "time": time.time(),
                                 "event": event, **fields}
        entry["hash"] = _entry_hash(entry)
        line = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        self._fh.write(line.encode("utf-8") + b"\n")
        self._fh.flush()
        if durable:
            os.fsync(self._fh.fileno())
        self.seq += 1
        self.prev = entry["hash"]
        return entry

    def close(self) -> None:
        self._fh.close()


def read_journal(path: Path) -> list[dict[str, Any]]:
    """All entries of ``path`` (no chain check; use :func:`verify_journal` for that)."""
    with Path(path).open("rb") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def tail_journal(path: Path, count: int, *, block: int = 65536) -> list[dict[str, Any]]:
    """The last ``count`` complete entries of ``path``, oldest first, read from the end (a long
    journal is not read whole); a line still being written is left out."""
    with Path(path).open("rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        data, start = b"", end
        while start > 0 and data.count(b"\n") <= count:
            start = max(0, start - block)
            fh.seek(start)
            data = fh.read(end - start)
    lines = data.split(b"\n")[:-1]  # the last piece is empty, or a torn line
    if start > 0:
        lines = lines[1:]  # may begin mid-line
    return [json.loads(line) for line in lines[-count:] if line.strip()] if count > 0 else []


__all__ = ["Journal", "read_journal", "tail_journal", "verify_journal"]
