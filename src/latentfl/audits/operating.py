"""Held-out operating points: the threshold comes from one half of the non-members, the rates
judged come from members and the other half.

Why: a threshold read off the same non-members it is then judged on makes its FPR look exact
when it is not (at 1% FPR on 500 non-members, five examples decide it). Here the calibration
half sets the threshold ``t`` (score > t is called "member"); conditionally on ``t`` the members
above it and the held-out non-members above it are two independent binomial counts with rates
TPR(t) and FPR(t). With no leak, members and non-members are exchangeable, so TPR(t) = FPR(t).
A point is flagged when the lower end of the TPR interval lies above the upper end of the
held-out FPR interval, both exact Clopper-Pearson intervals at the per-test level: a false flag
needs one of the two one-sided bounds to fail, which happens with probability at most that level.

An FPR target is *resolved* when each half holds at least ``MIN_TAIL`` non-members beyond the
threshold in expectation (n * target >= MIN_TAIL): with fewer, the threshold is set by a handful
of examples and the held-out FPR cannot confirm it. A point that is not resolved and not flagged
is "inconclusive" (absence of evidence, not evidence of absence); a flag stays a flag, because
the test above is valid at any sample size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from latentfl.audits.stats import clopper_pearson

MIN_TAIL = 10


@dataclass(frozen=True)
class HeldOutPoint:
    """One FPR target judged on held-out non-members; counts are the raw numbers behind rates."""

    target_fpr: float
    threshold: float
    true_positives: int
    members: int
    false_positives: int
    test_nonmembers: int
    calibration_nonmembers: int
    tpr: float
    tpr_low: float
    tpr_high: float
    fpr: float
    fpr_low: float
    fpr_high: float
    level: float            # two-sided level of both intervals (alpha / number of tests)
    resolved: bool
    nonmembers_needed: int  # scored non-members (both halves) that would resolve the target

    @property
    def status(self) -> str:
        if self.tpr_low > self.fpr_high:
            return "flag"
        return "pass" if self.resolved else "inconclusive"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def nonmembers_needed(target_fpr: float) -> int:
    """Scored non-members (two equal halves) that put MIN_TAIL of each half beyond the target."""
    return 2 * math.ceil(MIN_TAIL / target_fpr - 1e-9)


def split_halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``range(n)`` into a calibration half and a test half (sorted indices)."""
    if n < 2:
        raise ValueError(f"held-out operating points need at least 2 non-members, got {n}")
    perm = rng.permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def calibrated_threshold(calibration_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest observed score t with at most floor(target * n) calibration scores > t."""
    ordered = np.sort(np.asarray(calibration_scores, dtype=np.float64))[::-1]
    allowed = int(math.floor(target_fpr * ordered.size + 1e-9))
    return float(ordered[min(allowed, ordered.size - 1)])


def held_out_point(member_scores: np.ndarray, calibration_scores: np.ndarray,
                   test_scores: np.ndarray, target_fpr: float, level: float) -> HeldOutPoint:
    """Threshold from ``calibration_scores``; TPR on members and FPR on ``test_scores`` at it."""
    if not 0 < target_fpr < 1 or not 0 < level < 1:
        raise ValueError(f"target FPR {target_fpr} and level {level} must lie in (0, 1)")
    members = np.asarray(member_scores, dtype=np.float64)
    test = np.asarray(test_scores, dtype=np.float64)
    threshold = calibrated_threshold(calibration_scores, target_fpr)
    tp, fp = int((members > threshold).sum()), int((test > threshold).sum())
    (tpr_lo,), (tpr_hi,) = clopper_pearson(tp, members.size, alpha=level)
    (fpr_lo,), (fpr_hi,) = clopper_pearson(fp, test.size, alpha=level)
    n_cal = int(np.asarray(calibration_scores).size)
    needed = nonmembers_needed(target_fpr)
    return HeldOutPoint(
        target_fpr=float(target_fpr), threshold=threshold, true_positives=tp,
        members=int(members.size), false_positives=fp, test_nonmembers=int(test.size),
        calibration_nonmembers=n_cal, tpr=tp / members.size, tpr_low=float(tpr_lo),
        tpr_high=float(tpr_hi), fpr=fp / test.size, fpr_low=float(fpr_lo),
        fpr_high=float(fpr_hi), level=float(level),
        resolved=min(n_cal, int(test.size)) >= needed // 2, nonmembers_needed=needed)


__all__ = ["MIN_TAIL", "HeldOutPoint", "calibrated_threshold", "held_out_point",
           "nonmembers_needed", "split_halves"]
