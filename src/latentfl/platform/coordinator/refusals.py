"""Refusals journaled at a bounded rate: a flood of bad messages cannot become a flood of fsyncs.

Each (peer, reason) pair gets its first ``burst`` refusals of an interval journaled one by
one; later ones in the same interval are only counted, and when the interval ends one line
stands for them ("N more refusals from X: R", with ``count`` = N). Every refusal is still
answered and logged; only the journal lines are coalesced. Socket-free and clock-free: the
daemon passes the time.
"""

from __future__ import annotations

from dataclasses import dataclass

REFUSAL_INTERVAL_S = 10.0
REFUSAL_BURST = 3


@dataclass
class _Window:
    start: float
    journaled: int = 0
    suppressed: int = 0


@dataclass(frozen=True)
class Coalesced:
    """Refusals of one (peer, reason) that were counted, not journaled, in one interval."""

    peer: str | None
    reason: str
    count: int

    @property
    def sentence(self) -> str:
        return f"{self.count} more refusals from {self.peer or 'an unknown peer'}: {self.reason}"


class RefusalCoalescer:
    """Decides which refusals get a journal line of their own (see the module docstring)."""

    def __init__(self, *, interval_s: float = REFUSAL_INTERVAL_S,
                 burst: int = REFUSAL_BURST) -> None:
        self.interval_s = interval_s
        self.burst = burst
        self._windows: dict[tuple[str | None, str], _Window] = {}

    def admit(self, peer: str | None, reason: str, now: float) -> bool:
        """Count one refusal; True when it gets a journal line of its own."""
        window = self._windows.setdefault((peer, reason), _Window(now))
        if window.journaled < self.burst:
            window.journaled += 1
            return True
        window.suppressed += 1
        return False

    def next_due(self) -> float | None:
        """When the earliest open interval ends (None when none is open)."""
        return min((w.start + self.interval_s for w in self._windows.values()), default=None)

    def due(self, now: float, *, everything: bool = False) -> list[Coalesced]:
        """The counts of intervals that ended by ``now`` (all of them with ``everything``),
        which then start afresh."""
        out = []
        for key, window in list(self._windows.items()):
            if everything or now - window.start >= self.interval_s:
                if window.suppressed:
                    out.append(Coalesced(key[0], key[1], window.suppressed))
                del self._windows[key]
        return out


__all__ = ["REFUSAL_BURST", "REFUSAL_INTERVAL_S", "Coalesced", "RefusalCoalescer"]
