"""Crash-safe file writes: a reader sees the old file or the new one, never half of either.

Every state file in latentfl (checkpoints, accepted updates, the privacy ledger, rosters, audit
results, experiment tables) is written through :func:`write_atomic`: a temp file in the same
folder, fsynced, renamed over the target, then the folder fsynced so the rename survives a crash.
:func:`write_atomic_many` does the same for several files at once, with their fsyncs issued
together (the filesystem commits them as one) and each folder fsynced once.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any


def fsync_dir(path: Path | str) -> None:
    """Make a rename or a new file inside the folder ``path`` durable (on a file: its data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path | str, data: bytes | str, mode: int = 0o644, *,
                 fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` (text is UTF-8), created with permission bits ``mode``.
    ``fsync=False`` keeps the replacement atomic for readers but not durable across a crash
    (for live views such as the daemon's status.json, rewritten often and worthless after)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


_FSYNC_THREADS = 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _fsync_pool() -> ThreadPoolExecutor:
    """The process's fsync threads, started once: on a busy CPU, starting fresh threads for
    each call took longer than the fsyncs themselves (each start waits to be scheduled)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_FSYNC_THREADS, thread_name_prefix="fsync")
        return _pool


def _forget_pool_in_child() -> None:
    """A forked child has none of its parent's threads: it starts its own pool if it needs one."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def fsync_beside(sync: Callable[[], None]) -> Future:
    """Start ``sync`` (the fsync of a file kept elsewhere, such as an append-only log) on the
    fsync threads, so that it overlaps the caller's own writes; wait for its Future before
    acting on what it makes durable."""
    return _fsync_pool().submit(sync)


def write_atomic_many(files: list[tuple[Path, bytes]], mode: int = 0o644) -> None:
    """:func:`write_atomic` for every (path, bytes) in ``files``, made durable together: all
    temp files written, fsynced concurrently, renamed, then each folder fsynced once. If
    anything fails, the temp files are removed and the error propagates (files already renamed
    stay: the caller undoes what it had asked for)."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), mode)
                fh.write(data)
        list(_fsync_pool().map(fsync_dir, [tmp for tmp, _ in temps]))
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    for folder in {path.parent for path, _ in files}:
        fsync_dir(folder)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the sorted, indented JSON every state file holds."""
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode("utf-8")


def write_json_atomic(path: Path | str, obj: Any, *, mode: int = 0o644,
                      fsync: bool = True) -> None:
    """:func:`write_atomic` of ``obj`` as :func:`json_bytes`."""
    write_atomic(path, json_bytes(obj), mode=mode, fsync=fsync)


__all__ = ["fsync_beside", "fsync_dir", "json_bytes", "write_atomic", "write_atomic_many",
           "write_json_atomic"]
