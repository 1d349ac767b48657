"""On-disk cache of decoded datasets: one uncompressed ``.npz`` per source, written atomically.

A cache entry is keyed by the source's resolved path, size and modification time (for a folder:
the relative path, size and mtime of every file in it), so editing or replacing the source
invalidates it. Entries are read with ``allow_pickle=False``; an entry that cannot be read is
logged, ignored and rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from latentfl.log import get_logger

CACHE_FORMAT = 1
"""Bumped whenever the layout of a cache entry or the decoding rules change."""


def resolve_cache_dir(cache_dir: Path | str | None) -> Path:
    """The cache root: ``cache_dir``, else ``$LATENTFL_CACHE_DIR``, else ~/.cache/latentfl."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LATENTFL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "latentfl"


def source_key(kind: str, source: Path) -> str:
    """A hex digest naming ``source`` as it is now: path, size and mtime of each file."""
    source = source.resolve()
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{kind}|{source}".encode())
    if source.is_dir():
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                st = (Path(root) / name).stat()
                rel = os.path.relpath(os.path.join(root, name), source)
                digest.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        st = source.stat()
        digest.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def entry_path(cache_root: Path, name: str, key: str) -> Path:
    """Where the cache entry of dataset ``name`` with source key ``key`` lives."""
    return cache_root / "datasets" / f"{name}-{key[:20]}.npz"


def load_entry(path: Path, required: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays of the entry at ``path``; None when it is absent, unreadable or incomplete."""
    if not path.is_file():
        return None
    try:
        # Open the file ourselves: np.load leaks its handle when the zip directory is bad.
        with path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        get_logger("data.cache").warning(
            "corrupt cache entry ignored", path=str(path), error=str(exc)
        )
        return None
    missing = [name for name in required if name not in arrays]
    if missing:
        get_logger("data.cache").warning(
            "incomplete cache entry ignored", path=str(path), missing=missing
        )
        return None
    return arrays


def save_entry(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write ``arrays`` to ``path`` via a temp file, fsync and rename; False if it could not."""
    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp", delete=False
        ) as handle:
            tmp_name = handle.name
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        get_logger("data.cache").warning(
            "dataset cache not written", path=str(path), error=str(exc)
        )
        return False
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
    return True


__all__ = [
    "CACHE_FORMAT",
    "entry_path",
    "load_entry",
    "resolve_cache_dir",
    "save_entry",
    "source_key",
]
