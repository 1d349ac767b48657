"""Append-only, hash-chained journal of every accepted and refused message.

One JSON object per line. Each entry carries ``seq`` (0, 1, 2, ...), ``prev`` (the previous
entry's ``hash``; 64 zeros for the first) and ``hash`` = SHA-256 of the entry's canonical JSON
without ``hash``. Changing, removing or reordering any line breaks the chain at that line, which
:func:`verify_journal` reports. Every checkpoint records the journal's length and head hash
(``Journal.anchor``), so :func:`verify_against_checkpoint` also notices a journal that was
deleted, emptied or cut short, which the chain alone cannot. Each append is flushed and fsynced before the caller acts on it
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


def verify_against_checkpoint(path: Path, state_dir: Path) -> int:
    """Check the chain of journal ``path`` and that it still holds what the latest checkpoint
    of ``state_dir`` recorded (its length and head hash then); return the number of entries.

    StateError names what is wrong when the journal was deleted, emptied, truncated or
    replaced since that checkpoint: the chain alone cannot tell a journal that never had those
    lines from one that lost them.
    """
    path = Path(path)
    count = verify_journal(path) if path.exists() else 0
    anchor, round = _checkpoint_anchor(Path(state_dir))
    if anchor is None:
        return count
    entries, head = anchor
    if count < entries:
        state = "missing" if not path.exists() else f"holds {count} entries"
        raise StateError(f"journal {path} {state}, but the checkpoint of round {round} recorded "
                         f"{entries}; the journal was deleted or truncated (restore it from a "
                         "backup, or start the coordinator with --accept-journal-loss).")
    if entries and _entry_at(path, entries - 1).get("hash") != head:
        raise StateError(f"journal {path} entry {entries - 1} differs from the one the "
                         f"checkpoint of round {round} recorded; the journal was replaced "
                         "(restore it from a backup, or start the coordinator with "
                         "--accept-journal-loss).")
    return count


def _checkpoint_anchor(state_dir: Path) -> tuple[tuple[int, str] | None, int | None]:
    """The (entries, head hash) the latest checkpoint recorded, and its round."""
    latest = state_dir / "latest.json"
    if not latest.exists():
        return None, None
    try:
        round = json.loads(latest.read_text())["round"]
        meta = json.loads((state_dir / "checkpoints" / f"round-{round:06d}.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"the latest checkpoint in {state_dir} cannot be read ({exc}).") from None
    anchor = meta.get("journal")
    if not (isinstance(anchor, dict) and type(anchor.get("entries")) is int
            and isinstance(anchor.get("head"), str)):
        return None, round  # written before checkpoints recorded the journal
    return (anchor["entries"], anchor["head"]), round


def _entry_at(path: Path, seq: int) -> dict[str, Any]:
    with path.open("rb") as fh:
        for index, raw in enumerate(fh):
            if index == seq:
                return json.loads(raw)
    return {}


class Journal:
    """The coordinator's journal file, opened for appending."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        seq = verify_journal(self.path) if self.path.exists() else 0
        #: (entries, hash of the last entry), replaced as one value so that another thread
        #: (the aggregation worker writing a checkpoint) reads a consistent pair
        self.head: tuple[int, str] = (seq, self._last_hash(seq))
        self._synced = seq  # entries known to be on disk
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @property
    def seq(self) -> int:
        return self.head[0]

    @property
    def prev(self) -> str:
        return self.head[1]

    def anchor(self) -> dict[str, Any]:
        """What a checkpoint records of the journal: its length and head hash now."""
        entries, head = self.head
        return {"entries": entries, "head": head}

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

    def _last_hash(self, seq: int) -> str:
        if seq == 0:
            return GENESIS
        with self.path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            last = fh.read().splitlines()[-1]
        return json.loads(last)["hash"]

    def append(self, event: str, *, durable: bool = True, **fields: Any) -> dict[str, Any]:
        """Write one entry and return it; fsynced unless ``durable`` is false (heartbeats: the
        next durable entry, :meth:`sync`, or the OS flushes them)."""
        return self.append_group([(event, fields)], durable=durable)[0]

    def append_group(self, entries: list[tuple[str, dict[str, Any]]], *,
                     durable: bool = True) -> list[dict[str, Any]]:
        """Write several entries with one write and (unless ``durable`` is false) one fsync.
        All or nothing: if the write or the fsync fails, the file is cut back to where it was
        and the error propagates, so the chain never holds a line its caller did not see
        succeed."""
        seq, prev = self.head
        out, lines = [], []
        for event, fields in entries:
            entry: dict[str, Any] = {"seq": seq, "prev": prev, "time": time.time(),
                                     "event": event, **fields}
            entry["hash"] = prev = _entry_hash(entry)
            seq += 1
            out.append(entry)
            lines.append(json.dumps(entry, sort_keys=True, separators=(",", ":"),
                                    ensure_ascii=False).encode("utf-8") + b"\n")
        data = b"".join(lines)
        start = os.fstat(self._fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            if durable:
                os.fsync(self._fd)
        except BaseException:
            os.ftruncate(self._fd, start)
            raise
        self.head = (seq, prev)
        if durable:
            self._synced = seq
        return out

    def sync(self) -> None:
        """fsync the entries appended without ``durable`` since the last fsync, if any."""
        if self._synced < self.seq:
            os.fsync(self._fd)
            self._synced = self.seq

    def close(self) -> None:
        os.close(self._fd)


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


__all__ = ["Journal", "read_journal", "tail_journal", "verify_against_checkpoint", "verify_journal"]
