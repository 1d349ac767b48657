"""Process-tree meters for the benchmarks that run other systems beside latentfl.

:class:`TreeMeter` samples, from a thread, every named process tree's CPU seconds (the tree's
live processes plus the children they already reaped), its summed RSS, and the TCP payload
bytes of the tree's established connections to one server port (``ss -tinp``: bytes sent plus
received, per connection the largest count seen, so a connection that closed between two
samples keeps what it had; one that opened and closed between two samples is missed). A child
process's CPU counts once its parent in the tree has reaped it (``cutime``) or while it runs.
:meth:`TreeMeter.at` interpolates a tree's counters at any time between samples, so a window
(e.g. rounds 2 to 10) can be cut out after the run.
"""

from __future__ import annotations

import bisect
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds of it and its reaped children, RSS bytes), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    # fields[1] ppid; [11..14] utime stime cutime cstime; [21] rss pages
    cpu = sum(int(f) for f in fields[11:15]) / _TICK
    return int(fields[1]), cpu, int(fields[21]) * _PAGE


def _tree(root: int, table: dict[int, tuple[int, float, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
            todo.extend(children.get(pid, ()))
    return out


_SS_PID = re.compile(r"pid=(\d+)")
_SS_BYTES = re.compile(r"bytes_(sent|received):(\d+)")


def _connections(port: int) -> dict[tuple[str, int], int]:
    """(local address, owning pid) -> bytes sent + received, for connections to ``port``."""
    out = subprocess.run(["ss", "-tinpH", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=False).stdout
    conns: dict[tuple[str, int], int] = {}
    local, pid = None, 0
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            parts = line.split()
            local = parts[2] if len(parts) > 2 else None
            found = _SS_PID.search(line)
            pid = int(found.group(1)) if found else 0
        elif local is not None:
            conns[(local, pid)] = sum(int(v) for _, v in _SS_BYTES.findall(line))
    return conns


@dataclass
class Sample:
    t: float
    cpu: dict[str, float]
    rss: dict[str, int]
    wire: dict[str, int]


class TreeMeter:
    """Samples named process trees every ``period_s`` while open (see the module docstring)."""

    def __init__(self, roots: dict[str, int], port: int, *, period_s: float = 0.2) -> None:
        self.roots = dict(roots)
        self.port = port
        self.period_s = period_s
        self.samples: list[Sample] = []
        self.peak_rss: dict[str, int] = dict.fromkeys(roots, 0)
        self._wire: dict[tuple[str, int], tuple[str, int]] = {}  # conn -> (tree, max bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMeter:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def sample(self) -> None:
        table = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (st := _stat(int(name))) is not None:
                table[int(name)] = st
        owner: dict[int, str] = {}
        cpu = dict.fromkeys(self.roots, 0.0)
        rss = dict.fromkeys(self.roots, 0)
        for tree, root in self.roots.items():
            for pid in _tree(root, table):
                owner[pid] = tree
                cpu[tree] += table[pid][1]
                rss[tree] += table[pid][2]
        for tree in cpu:
            self.peak_rss[tree] = max(self.peak_rss[tree], rss[tree])
        for conn, count in _connections(self.port).items():
            tree = owner.get(conn[1])
            if tree is not None:
                prev = self._wire.get(conn, (tree, 0))[1]
                self._wire[conn] = (tree, max(prev, count))
        wire = dict.fromkeys(self.roots, 0)
        for tree, count in self._wire.values():
            wire[tree] += count
        self.samples.append(Sample(time.time(), cpu, rss, wire))

    def at(self, t: float, tree: str, what: str) -> float:
        """Counter ``what`` ('cpu' or 'wire') of ``tree`` at time ``t``, interpolated."""
        times = [s.t for s in self.samples]
        i = bisect.bisect_left(times, t)
        if i <= 0:
            return float(getattr(self.samples[0], what)[tree])
        if i >= len(self.samples):
            return float(getattr(self.samples[-1], what)[tree])
        a, b = self.samples[i - 1], self.samples[i]
        va, vb = getattr(a, what)[tree], getattr(b, what)[tree]
        return va + (vb - va) * (t - a.t) / max(b.t - a.t, 1e-9)
