"""Held-out operating points: false flags within the level, power, and 'inconclusive' sizes."""

from __future__ import annotations

import numpy as np

from latentfl.audits.operating import held_out_point, nonmembers_needed, split_halves


def test_exchangeable_scores_flag_at_most_the_level() -> None:
    """1,000 null draws (members like non-members) flag in at most the 5% level, plus noise."""
    rng = np.random.default_rng(0)
    flags = 0
    for _ in range(1000):
        scores = rng.normal(0, 1, 3000)
        cal, test = split_halves(2000, rng)
        flags += held_out_point(scores[2000:], scores[:2000][cal], scores[:2000][test],
                                0.01, 0.05).status == "flag"
    assert flags <= 50 + 3 * np.sqrt(50)


def test_separated_scores_flag_and_small_samples_are_inconclusive() -> None:
    """A clear leak flags even on few non-members; no signal on few non-members is inconclusive."""
    rng = np.random.default_rng(1)
    leak = held_out_point(rng.normal(3, 1, 500), rng.normal(0, 1, 100), rng.normal(0, 1, 100),
                          0.01, 0.01)
    assert leak.status == "flag" and not leak.resolved
    none = held_out_point(rng.normal(0, 1, 500), rng.normal(0, 1, 100), rng.normal(0, 1, 100),
                          0.01, 0.01)
    assert none.status == "inconclusive" and none.nonmembers_needed == nonmembers_needed(0.01)
    assert nonmembers_needed(0.01) == 2000 and nonmembers_needed(0.001) == 20000
    resolved = held_out_point(rng.normal(0, 1, 500), rng.normal(0, 1, 1000),
                              rng.normal(0, 1, 1000), 0.01, 0.01)
    assert resolved.resolved and resolved.status == "pass"
