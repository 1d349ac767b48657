"""File helpers for key material: private folders, secret-file permission checks, atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from latentfl.durable import fsync_dir, write_atomic
from latentfl.errors import SecurityError

SECRET_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
PRIVATE_DIR_MODE = 0o700


def make_private_dir(path: Path) -> None:
    """Create ``path`` (which must not exist yet) with mode 0700, whatever the umask."""
    path.mkdir(mode=PRIVATE_DIR_MODE)
    os.chmod(path, PRIVATE_DIR_MODE)


def read_secret_file(path: Path) -> bytes:
    """Read a secret key file, refusing one that group or others may read or write.

    The mode is checked on the open file descriptor, so the file checked is the file read.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise SecurityError(
            f"secret key file {path} does not exist; expected a key folder made by "
            "`latentfl keys init` or `latentfl keys add`"
        ) from None
    except PermissionError:
        raise SecurityError(
            f"secret key file {path} cannot be read by this user; expected a file owned by the "
            "user running latentfl"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecurityError(f"secret key file {path} is not a regular file")
        loose = stat.S_IMODE(info.st_mode) & 0o077
        if loose:
            raise SecurityError(
                f"secret key file {path} has mode {stat.S_IMODE(info.st_mode):04o}, which lets "
                f"group or others access it; expected 0600: run `chmod 600 {path}`"
            )
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` (never looser, not even briefly); fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


__all__ = [
    "PRIVATE_DIR_MODE",
    "PUBLIC_FILE_MODE",
    "SECRET_FILE_MODE",
    "fsync_dir",
    "make_private_dir",
    "read_secret_file",
    "write_atomic",
    "write_new_file",
]
