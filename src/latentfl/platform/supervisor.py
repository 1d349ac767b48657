"""Start, watch and stop ``python -m latentfl ...`` child processes, leaving none behind.

Every child runs in one process group that the supervisor owns (not the terminal's), with its
output in a log file. :meth:`Supervisor.stop` sends SIGTERM to the whole group, waits a grace
period, then SIGKILLs whatever is left, and returns each child's exit code. Used as a context
manager in the main thread, SIGTERM and SIGHUP to this process raise ``KeyboardInterrupt`` like
Ctrl-C does, so any of them, or an error, ends in :meth:`stop` and no child is orphaned. A signal
the caller ignores stays ignored (``nohup`` keeps a consortium running past a hang-up).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from latentfl.errors import StateError

_FORWARDED = (signal.SIGTERM, signal.SIGHUP)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str,
               *, interval_s: float = 0.05) -> None:
    """Return once ``predicate()`` is true; raise StateError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise StateError(f"timed out after {timeout_s:.0f}s waiting for {what}.")
        time.sleep(interval_s)


def _raise_interrupt(*_args: object) -> None:
    raise KeyboardInterrupt


class Supervisor:
    """Named ``latentfl`` child processes in one process group, logs under ``log_dir``."""

    def __init__(self, log_dir: Path, *, threads_per_child: int = 1) -> None:
        self.log_dir = Path(log_dir)
        self.procs: dict[str, subprocess.Popen] = {}
        self._pgid: int | None = None
        self._logs: list[IO[bytes]] = []
        # Each child is single-threaded by default: a consortium of N processes on a few cores
        # is slower, not faster, when each one also spreads torch over every core.
        self._env = {**os.environ, "OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", str(threads_per_child))}
        self._previous_handlers: dict[int, object] | None = None  # set in the main thread only

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        """Start ``python -m latentfl ARGS`` as child ``name``; output goes to ``log(name)``."""
        if name in self.procs:
            raise StateError(f"a child named {name!r} was already started; expected a new name.")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log(name).open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "latentfl", *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env,
            process_group=0 if self._pgid is None else self._pgid,  # the first child leads it
        )
        if self._pgid is None:
            self._pgid = proc.pid
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> Path:
        """The log file of child ``name`` (its stdout and stderr)."""
        return self.log_dir / f"{name}.log"

    def tail(self, name: str, chars: int = 3000) -> str:
        """The end of child ``name``'s log, for error messages."""
        try:
            return self.log(name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def exit_codes(self) -> dict[str, int | None]:
        """Each child's exit code, None while it runs."""
        return {name: proc.poll() for name, proc in self.procs.items()}

    def wait(self, name: str, timeout_s: float) -> int:
        """Wait for child ``name`` to exit; its exit code. StateError (with its log) on timeout."""
        try:
            return self.procs[name].wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise StateError(f"{name} did not exit within {timeout_s:.0f}s; the end of its log "
                             f"({self.log(name)}):\n{self.tail(name)}") from None

    def stop(self, grace_s: float = 10.0) -> dict[str, int]:
        """SIGTERM the group, SIGKILL it after ``grace_s``; every child's exit code."""
        if self._pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            for proc in self.procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # the group outlives its leader
                os.killpg(self._pgid, signal.SIGKILL)
            self._pgid = None  # children started later form a new group
        codes = {name: proc.wait() for name, proc in self.procs.items()}
        for log in self._logs:
            log.close()
        self._logs.clear()
        return codes

    def __enter__(self) -> Supervisor:
        if threading.current_thread() is threading.main_thread():
            self._previous_handlers = {s: signal.signal(s, _raise_interrupt) for s in _FORWARDED
                                       if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc_info: object) -> None:
        restore = {}
        if self._previous_handlers is not None:
            # a second Ctrl-C or SIGTERM must not cut the clean-up short
            restore = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
            restore.update(self._previous_handlers)
            for sig in _FORWARDED:
                signal.signal(sig, signal.SIG_IGN)
        try:
            self.stop()
        finally:
            for sig, handler in restore.items():
                signal.signal(sig, handler)
            self._previous_handlers = None


__all__ = ["Supervisor", "wait_until"]
