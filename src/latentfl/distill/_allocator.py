"""The C heap and garbage-collector settings the CPU distillation engine runs under.

An unrolled trajectory on a CPU allocates and frees activations of tens of MB many times per
iteration. glibc serves every block past its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and gives it back with ``munmap`` on free, so the kernel maps and zeroes the same
amount of memory again for the next block: at ConvNet-3 width 128, batch 100, that was about 40%
of an iteration (issue 27: 19.3 s, and 11.9 s with the same settings given through
``GLIBC_TUNABLES``). While :func:`engine_heap` is open, glibc serves large blocks from the heap
(``M_MMAP_MAX = 0``) and keeps freed memory for reuse (a high ``M_TRIM_THRESHOLD``); on exit
the defaults come back, so the heap's free top is returned to the system at the next free and a
daemon does not keep the engine's peak for the rest of its life.

The unroll also creates Python objects fast enough to trigger the cyclic garbage collector every
few hundred operations, and its full collections walked every object the process held (torch's
modules and all): ~6% of an iteration at width 32. While open, the objects that existed before
are frozen (``gc.freeze``), so collections look at the engine's new objects only; on exit they
are unfrozen and collectable again.

Nothing changes in the C heap where the C library has no ``mallopt`` (not glibc), or where the
user set glibc's malloc tunables themselves (their settings win).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
import threading
from collections.abc import Callable, Iterator

# mallopt parameters (malloc.h) and glibc's defaults for the two we change
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_KEEP_FREED = 2**31 - 1  # bytes (mallopt takes a C int): the most freed heap kept

_lock = threading.Lock()
_open = 0


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt, or None where it is absent or the user tuned malloc already."""
    if not sys.platform.startswith("linux") or "glibc.malloc." in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return None
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MALLOPT = _mallopt()


def _set(mmap_max: int, trim_threshold: int) -> None:
    if _MALLOPT is not None:
        _MALLOPT(_M_MMAP_MAX, mmap_max)
        _MALLOPT(_M_TRIM_THRESHOLD, trim_threshold)


@contextlib.contextmanager
def engine_heap() -> Iterator[None]:
    """Large blocks from the heap, freed memory kept and older objects frozen for the garbage
    collector, while open (nests; thread-safe)."""
    global _open
    with _lock:
        _open += 1
        if _open == 1:
            _set(0, _KEEP_FREED)
            gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _open -= 1
            if _open == 0:
                _set(_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
                gc.unfreeze()


__all__ = ["engine_heap"]
