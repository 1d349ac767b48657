"""ROC curves for membership scores, in plain numpy.

Convention everywhere in the audits: a higher score means "more likely a member". Members are the
positives, non-members the negatives; FPR is measured on non-members, TPR on members.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RocCurve:
    """One point per distinct threshold, from the strictest (nothing flagged) to the loosest.

    At ``thresholds[i]`` a point is called a member when its score is ``>= thresholds[i]``;
    ``true_positives``/``false_positives`` are the raw counts behind ``tpr``/``fpr``.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    num_members: int
    num_nonmembers: int


def _check(scores: np.ndarray, what: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError(f"{what} scores are empty; expected at least one score")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{what} scores contain NaN or infinity; expected finite numbers")
    return scores


def roc_curve(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> RocCurve:
    """ROC of the rule ``score >= t`` over every distinct threshold ``t`` (plus +inf)."""
    pos = _check(member_scores, "member")
    neg = _check(nonmember_scores, "non-member")
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    tp = np.cumsum(labels)
    fp = np.cumsum(~labels)
    # keep the last index of each run of equal scores: ties are decided together
    last = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    tp = np.r_[0, tp[last]]
    fp = np.r_[0, fp[last]]
    thresholds = np.r_[np.inf, scores[last]]
    return RocCurve(
        fpr=fp / neg.size,
        tpr=tp / pos.size,
        thresholds=thresholds,
        true_positives=tp.astype(np.int64),
        false_positives=fp.astype(np.int64),
        num_members=int(pos.size),
        num_nonmembers=int(neg.size),
    )


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Area under the ROC: P(member score > non-member score) + 0.5 P(tie) (Mann-Whitney U)."""
    pos = _check(member_scores, "member")
    neg = _check(nonmember_scores, "non-member")
    pooled = np.concatenate([pos, neg])
    order = np.argsort(pooled, kind="stable")
    ranks = np.empty(pooled.size, dtype=np.float64)
    sorted_scores = pooled[order]
    # average ranks over ties (1-based)
    starts = np.r_[0, np.nonzero(np.diff(sorted_scores))[0] + 1]
    ends = np.r_[starts[1:], pooled.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    rank_sum = ranks[: pos.size].sum()
    u = rank_sum - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


@dataclass(frozen=True)
class OperatingPoint:
    """The best TPR reachable while the FPR measured on non-members stays at or below a target."""

    target_fpr: float
    threshold: float
    fpr: float
    tpr: float
    true_positives: int
    false_positives: int
    num_members: int
    num_nonmembers: int


def tpr_at_fpr(curve: RocCurve, target_fpr: float) -> OperatingPoint:
    """Operating point with the highest TPR among thresholds whose FPR <= ``target_fpr``.

    The threshold is calibrated on the non-members only. When there are fewer than
    ``1/target_fpr`` non-members the only point with FPR <= target may be FPR = 0.
    """
    ok = np.nonzero(curve.fpr <= target_fpr + 1e-12)[0]
    i = int(ok[np.argmax(curve.tpr[ok])])
    return OperatingPoint(
        target_fpr=float(target_fpr),
        threshold=float(curve.thresholds[i]),
        fpr=float(curve.fpr[i]),
        tpr=float(curve.tpr[i]),
        true_positives=int(curve.true_positives[i]),
        false_positives=int(curve.false_positives[i]),
        num_members=curve.num_members,
        num_nonmembers=curve.num_nonmembers,
    )


__all__ = ["OperatingPoint", "RocCurve", "auc", "roc_curve", "tpr_at_fpr"]
