"""Statistics of the audits against independent references: brute force, known values, theory."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from latentfl.audits.dpcheck import dp_bound_check
from latentfl.audits.roc import auc, roc_curve, tpr_at_fpr
from latentfl.audits.stats import binomial_sf, clopper_pearson, rank_tail


def _binomial_sf_direct(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


@pytest.mark.parametrize(("k", "n", "p"), [(0, 5, 0.3), (3, 10, 0.2), (10, 10, 0.5),
                                           (7, 40, 0.015), (1, 1, 0.9), (25, 60, 0.5)])
def test_binomial_tail_matches_direct_sum(k: int, n: int, p: float) -> None:
    """The log-space binomial tail equals the exact sum of binomial terms."""
    assert binomial_sf(k, n, p) == pytest.approx(_binomial_sf_direct(k, n, p), rel=1e-10)


def test_rank_tail_matches_enumeration_of_all_orderings() -> None:
    """The negative-hypergeometric tail equals counting every ordering of members/non-members."""
    m, n = 4, 5
    for r in (1, 2, 3):
        counts = {}
        layouts = list(itertools.combinations(range(m + n), m))
        for members_at in layouts:
            nonmember_positions = [i for i in range(m + n) if i not in members_at]
            cut = nonmember_positions[r - 1]
            k = sum(1 for i in members_at if i < cut)
            counts[k] = counts.get(k, 0) + 1
        for k0 in range(m + 2):
            expected = sum(c for k, c in counts.items() if k >= k0) / len(layouts)
            assert rank_tail(k0, m, n, r) == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_clopper_pearson_known_values() -> None:
    """Exact intervals match published values (e.g. 5/10: 0.1871-0.8129 at 95%)."""
    lo, hi = clopper_pearson([0, 5, 10, 1], [10, 10, 10, 1000], alpha=0.05)
    assert lo[0] == 0.0 and hi[0] == pytest.approx(0.308497, abs=1e-6)
    assert lo[1] == pytest.approx(0.187086, abs=1e-6) and hi[1] == pytest.approx(0.812914, abs=1e-6)
    assert lo[2] == pytest.approx(0.691503, abs=1e-6) and hi[2] == 1.0
    assert lo[3] == pytest.approx(0.0000253, abs=1e-7) and hi[3] == pytest.approx(0.005558, abs=1e-6)


def test_clopper_pearson_ends_solve_the_binomial_tails() -> None:
    """At the interval ends the binomial tails equal alpha/2, the defining equations."""
    lo, hi = clopper_pearson(7, 30, alpha=0.1)
    assert binomial_sf(7, 30, float(lo[0])) == pytest.approx(0.05, rel=1e-6)
    assert 1 - binomial_sf(8, 30, float(hi[0])) == pytest.approx(0.05, rel=1e-6)


def test_auc_matches_pairwise_count_with_ties() -> None:
    """AUC equals P(member > non-member) + 0.5 P(tie) counted over all pairs."""
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 6, 40).astype(float)
    neg = rng.integers(0, 5, 50).astype(float)
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc(pos, neg) == pytest.approx(pairs, rel=1e-12)
    curve = roc_curve(pos, neg)
    assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(pairs, rel=1e-12)


@pytest.mark.parametrize("d", [0.0, 0.5, 1.0, 2.0])
def test_gaussian_scores_give_theoretical_auc(d: float) -> None:
    """Members N(d,1) vs non-members N(0,1) give AUC = Phi(d / sqrt 2) within sampling error."""
    rng = np.random.default_rng(1)
    members = rng.normal(d, 1.0, 20000)
    nonmembers = rng.normal(0.0, 1.0, 20000)
    expected = 0.5 * (1 + math.erf(d / 2))  # Phi(d / sqrt2) = (1 + erf(d / 2)) / 2
    assert auc(members, nonmembers) == pytest.approx(expected, abs=0.01)


def test_tpr_at_fpr_threshold_is_calibrated_on_nonmembers() -> None:
    """TPR at 1% FPR for N(2,1) vs N(0,1) is Phi(2 - z_0.99) and the FPR stays below 1%."""
    rng = np.random.default_rng(2)
    op = tpr_at_fpr(roc_curve(rng.normal(2, 1, 20000), rng.normal(0, 1, 20000)), 0.01)
    assert op.fpr <= 0.01
    expected = 0.5 * (1 + math.erf((2 - 2.326348) / math.sqrt(2)))
    assert op.tpr == pytest.approx(expected, abs=0.02)


def test_dp_bound_violation_is_reported() -> None:
    """A fabricated attack far above the eps=0.1 bound is reported as a violation."""
    members = np.r_[np.full(900, 1.0), np.zeros(100)]
    nonmembers = np.r_[np.full(10, 1.0), np.zeros(990)]
    check = dp_bound_check(roc_curve(members, nonmembers), epsilon=0.1, delta=1e-5)
    assert check.violated and check.violations >= 1
    assert check.epsilon_lower_bound > 3.0


def test_dp_bound_holds_for_randomised_response() -> None:
    """Scores from an exactly eps-DP mechanism (randomised response, eps=1) raise no violation."""
    rng = np.random.default_rng(3)
    eps = 1.0
    keep = math.exp(eps) / (1 + math.exp(eps))
    members = (rng.random(5000) < keep).astype(float)
    nonmembers = (rng.random(5000) >= keep).astype(float)
    check = dp_bound_check(roc_curve(members, nonmembers), epsilon=eps, delta=0.0)
    assert not check.violated
    assert check.epsilon_lower_bound <= eps
