"""Exact small-sample statistics the audits need, without scipy.

Binomial tails and negative-hypergeometric tails are summed in log space from ``math.lgamma``;
Clopper-Pearson intervals invert the binomial tail by bisection (the beta quantile it equals).
All functions are pure and deterministic.
"""

from __future__ import annotations

import math

import numpy as np


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided p-value of seeing k or more successes."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability p={p} is outside [0, 1]")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [_log_comb(n, j) + j * lp + (n - j) * lq for j in range(k, n + 1)]
    return min(1.0, math.exp(_logsumexp(terms)))


def rank_tail(k: int, members: int, nonmembers: int, rank: int = 1) -> float:
    """P(K >= k) where K counts members ranked above the ``rank``-th best non-member.

    Under the null hypothesis (members and non-members exchangeable: the ordering of the pooled
    scores is uniformly random) K follows a negative hypergeometric law:
    P(K = j) = C(j + r - 1, j) C(m - j + n - r, m - j) / C(m + n, m). This is the exact
    permutation p-value of "k members beat the r-th closest non-member".
    """
    m, n, r = members, nonmembers, rank
    if not 1 <= r <= n:
        raise ValueError(f"rank={r} must lie in 1..{n} (the number of non-members)")
    if k <= 0:
        return 1.0
    if k > m:
        return 0.0
    log_total = _log_comb(m + n, m)
    terms = [_log_comb(j + r - 1, j) + _log_comb(m - j + n - r, m - j) - log_total
             for j in range(k, m + 1)]
    return min(1.0, math.exp(_logsumexp(terms)))


class _LogFactorials:
    """Table of log(i!) for the vectorised binomial tails below."""

    def __init__(self, n: int) -> None:
        self.table = np.array([math.lgamma(i + 1) for i in range(n + 1)], dtype=np.float64)


def _binomial_sf_many(k: np.ndarray, n: np.ndarray, p: np.ndarray, lf: np.ndarray) -> np.ndarray:
    """Vectorised P(Bin(n_i, p_i) >= k_i); rows are independent (k, n, p) triples."""
    width = int(n.max()) + 1
    j = np.arange(width)[None, :]
    nn = n[:, None]
    valid = (j >= k[:, None]) & (j <= nn)
    pp = np.clip(p, 1e-300, 1 - 1e-16)[:, None]
    jj = np.minimum(j, nn)
    logpmf = (lf[nn] - lf[jj] - lf[nn - jj] + jj * np.log(pp) + (nn - jj) * np.log1p(-pp))
    logpmf = np.where(valid, logpmf, -np.inf)
    top = logpmf.max(axis=1, keepdims=True)
    top_safe = np.where(np.isfinite(top), top, 0.0)
    total = np.exp(top_safe[:, 0]) * np.exp(logpmf - top_safe).sum(axis=1)
    total = np.where(np.isfinite(top[:, 0]), total, 0.0)
    total = np.where(k <= 0, 1.0, total)
    return np.clip(total, 0.0, 1.0)


def _lower_ends(k: np.ndarray, n: np.ndarray, tail: float) -> np.ndarray:
    """The p with P(Bin(n, p) >= k) = tail (0 where k = 0), by 50 bisection steps."""
    lf = _LogFactorials(int(n.max())).table
    out = np.zeros(k.size)
    chunk = max(1, 4_000_000 // (int(n.max()) + 1))
    for start in range(0, k.size, chunk):
        kc, nc = k[start:start + chunk], n[start:start + chunk]
        lo, hi = np.zeros(kc.size), np.ones(kc.size)
        for _ in range(50):
            mid = (lo + hi) / 2
            too_low = _binomial_sf_many(kc, nc, mid, lf) < tail
            lo, hi = np.where(too_low, mid, lo), np.where(too_low, hi, mid)
        out[start:start + chunk] = np.where(kc == 0, 0.0, (lo + hi) / 2)
    return out


def clopper_pearson(
    successes: np.ndarray | int, trials: np.ndarray | int, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided (1 - alpha) interval for a binomial proportion, vectorised.

    The lower end p_L solves P(Bin(n, p_L) >= k) = alpha/2 (0 when k = 0); the upper end p_U
    solves P(Bin(n, p_U) <= k) = alpha/2 (1 when k = n), which is 1 - p_L(n - k, n). The tail
    is monotone in p, so 50 bisection steps pin each end to about 1e-15.
    """
    k = np.atleast_1d(np.asarray(successes, dtype=np.int64))
    n = np.atleast_1d(np.asarray(trials, dtype=np.int64))
    k, n = np.broadcast_arrays(k, n)
    k, n = k.reshape(-1).copy(), n.reshape(-1).copy()
    if np.any(n <= 0) or np.any(k < 0) or np.any(k > n):
        raise ValueError("Clopper-Pearson needs 0 <= successes <= trials and trials >= 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha} must lie strictly between 0 and 1")
    # upper(k, n) = 1 - lower(n - k, n), so one bisection for the lower end serves both ends
    kk = np.concatenate([k, n - k])
    nn = np.concatenate([n, n])
    pairs, where = np.unique(np.stack([kk, nn], axis=1), axis=0, return_inverse=True)
    lows = _lower_ends(pairs[:, 0], pairs[:, 1], alpha / 2)[where.reshape(-1)]
    lower = lows[: k.size]
    upper = 1.0 - lows[k.size:]
    return lower, upper


__all__ = ["binomial_sf", "clopper_pearson", "rank_tail"]
