"""Spreading independent pieces of work over ranks: :func:`balance`.

Used for a round's distillation jobs (:mod:`latentfl.distill.distributed`) and for an
experiment grid's cells (:mod:`latentfl.experiment.runner`). The split depends only on the costs
and the number of ranks, so every rank computes the same one without talking to the others.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from latentfl.errors import ConfigError

__all__ = ["balance"]


def balance(costs: Sequence[float], ranks: int) -> list[list[int]]:
    """Indices of ``costs`` per rank: longest piece first to the least-loaded rank (ties: the
    lower rank, the earlier piece), so the slowest rank finishes as early as the greedy rule
    allows; each rank's list is in index order."""
    if ranks < 1:
        raise ConfigError(f"cannot spread work over {ranks} ranks; expected at least 1.")
    loads: list[tuple[float, int]] = [(0, r) for r in range(ranks)]
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, r = heapq.heappop(loads)
        shares[r].append(i)
        heapq.heappush(loads, (load + costs[i], r))
    return [sorted(s) for s in shares]
