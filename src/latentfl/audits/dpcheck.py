"""Does a measured attack beat what an (epsilon, delta)-DP guarantee allows?

For any membership test against an (eps, delta)-DP training algorithm, at every operating point
TPR <= e^eps FPR + delta and TNR <= e^eps FNR + delta (Kairouz et al. 2015). We check both at
every distinct threshold of the ROC, using one-sided Clopper-Pearson bounds (TPR from below,
FPR from above) with a Bonferroni split of ``alpha`` over all checks, so sampling noise alone
reports a violation with probability at most ``alpha``. A violation means the DP claim is
false: a bug in the accounting, the noise, or the claim attached to the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from latentfl.audits.roc import RocCurve
from latentfl.audits.stats import clopper_pearson


@dataclass(frozen=True)
class DPCheck:
    epsilon: float
    delta: float
    points_checked: int
    violations: int
    worst_fpr: float      # the operating point that came closest to (or beyond) the bound
    worst_tpr: float
    worst_margin: float   # max of (TPR lower bound - bound); > 0 means violated
    epsilon_lower_bound: float  # largest eps the measured points prove (0 if none)

    @property
    def violated(self) -> bool:
        return self.violations > 0


def _one_sided(k: np.ndarray, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper one-sided (1 - alpha) bounds, computed once per distinct count."""
    values, where = np.unique(k, return_inverse=True)
    lo, hi = clopper_pearson(values, n, alpha=2 * alpha)
    return lo[where], hi[where]


def dp_bound_check(curve: RocCurve, epsilon: float, delta: float,
                   alpha: float = 0.05) -> DPCheck:
    """Check TPR <= e^eps FPR + delta (and its mirror) at every operating point of ``curve``."""
    if epsilon < 0 or not 0 <= delta < 1:
        raise ValueError(f"DP claim (epsilon={epsilon}, delta={delta}) is invalid; expected "
                         "epsilon >= 0 and 0 <= delta < 1")
    points = curve.fpr.size
    level = alpha / (2 * points)
    tpr_lo, tpr_hi = _one_sided(curve.true_positives, curve.num_members, level)
    fpr_lo, fpr_hi = _one_sided(curve.false_positives, curve.num_nonmembers, level)
    e = math.exp(epsilon)
    margin_a = tpr_lo - (e * fpr_hi + delta)
    margin_b = (1 - fpr_hi) - (e * (1 - tpr_lo) + delta)
    margin = np.maximum(margin_a, margin_b)
    worst = int(np.argmax(margin))
    # eps that each point proves: TPR_lo <= e^eps FPR_hi + delta fails for smaller eps
    with np.errstate(divide="ignore", invalid="ignore"):
        eps_a = np.log(np.maximum(tpr_lo - delta, 0) / fpr_hi)
        eps_b = np.log(np.maximum(1 - fpr_hi - delta, 0) / (1 - tpr_lo))
    proven = np.concatenate([eps_a[np.isfinite(eps_a)], eps_b[np.isfinite(eps_b)], [0.0]])
    return DPCheck(
        epsilon=float(epsilon), delta=float(delta), points_checked=int(points),
        violations=int((margin > 0).sum()),
        worst_fpr=float(curve.fpr[worst]), worst_tpr=float(curve.tpr[worst]),
        worst_margin=float(margin[worst]), epsilon_lower_bound=float(max(proven.max(), 0.0)),
    )


__all__ = ["DPCheck", "dp_bound_check"]
