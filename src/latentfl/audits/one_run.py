"""Epsilon lower bounds from one training run (the idea of Steinke, Nasr and Jagielski,
"Privacy auditing with one (1) training run", NeurIPS 2023), as pure functions.

Setting: m canaries, each included in training independently with probability 1/2. After the
run the auditor scores every canary, guesses "in" for the k+ highest scores and "out" for the
k- lowest (r = k+ + k- guesses, the rest abstain) and counts the correct guesses W. If training
is (epsilon, 0)-DP, each guess is right with probability at most p = e^eps / (1 + e^eps) even
given the other canaries, so W is dominated by Binomial(r, p):

    P[W >= v] <= f(v) := P[Bin(r, p) >= v].

With delta > 0 the paper's bound adds a term for the rare outputs on which DP fails:

    P[W >= v] <= f(v) + 2 m delta max_{1 <= i <= m} (f(v - i) - f(v)) / i.

Observing v correct guesses therefore rules out, at confidence 1 - beta, every epsilon whose
bound on P[W >= v] is below beta; the largest such epsilon is the reported lower bound. The bound
rises with epsilon, so it is found by bisection.
"""

from __future__ import annotations

import math

import numpy as np

from latentfl.audits.stats import binomial_sf

MAX_EPSILON = 50.0


def _upper_tails(r: int, p: float) -> np.ndarray:
    """f(u) = P[Bin(r, p) >= u] for u = 0..r+1 (f(0) = 1, f(r+1) = 0)."""
    if p >= 1.0:
        return np.r_[np.ones(r + 1), 0.0]
    j = np.arange(r + 1)
    log_pmf = (np.array([math.lgamma(r + 1) - math.lgamma(i + 1) - math.lgamma(r - i + 1)
                         for i in j]) + j * math.log(p) + (r - j) * math.log1p(-p))
    pmf = np.exp(log_pmf - log_pmf.max())
    pmf /= pmf.sum()
    tails = np.cumsum(pmf[::-1])[::-1]
    return np.r_[np.minimum(tails, 1.0), 0.0]


def correct_guess_tail(correct: int, guesses: int, epsilon: float, *, delta: float = 0.0,
                       canaries: int | None = None) -> float:
    """Upper bound on P[W >= correct] when training is (epsilon, delta)-DP (see module doc)."""
    if not 0 <= correct <= guesses:
        raise ValueError(f"correct guesses {correct} must lie in 0..{guesses}")
    if correct == 0:
        return 1.0
    p = 1.0 / (1.0 + math.exp(-epsilon))
    if delta == 0.0:
        return binomial_sf(correct, guesses, p)
    m = guesses if canaries is None else canaries
    f = _upper_tails(guesses, p)
    i = np.arange(1, m + 1)
    shifted = f[np.clip(correct - i, 0, guesses + 1)]
    extra = 2 * m * delta * float(np.max((shifted - f[correct]) / i))
    return min(1.0, float(f[correct]) + extra)


def epsilon_lower_bound(correct: int, guesses: int, *, beta: float, delta: float = 0.0,
                        canaries: int | None = None) -> float:
    """Largest epsilon ruled out at confidence 1 - beta by ``correct`` of ``guesses`` right."""
    if not 0 < beta < 1:
        raise ValueError(f"beta {beta} must lie strictly between 0 and 1")
    if guesses == 0 or correct_guess_tail(correct, guesses, 0.0, delta=delta,
                                          canaries=canaries) >= beta:
        return 0.0
    lo, hi = 0.0, MAX_EPSILON
    if correct_guess_tail(correct, guesses, hi, delta=delta, canaries=canaries) < beta:
        return hi
    for _ in range(60):
        mid = (lo + hi) / 2
        if correct_guess_tail(correct, guesses, mid, delta=delta, canaries=canaries) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def guess_counts(canaries: int) -> list[int]:
    """The numbers of guesses tried (halves of m down to about 16): few, so beta splits little."""
    counts, r = [], canaries - canaries % 2
    while r >= 16 and len(counts) < 6:
        counts.append(r)
        r = (r // 2) - (r // 2) % 2
    return counts or [canaries - canaries % 2]


def best_guesses(scores: np.ndarray, included: np.ndarray, *, beta: float, delta: float
                 ) -> dict[str, float | int]:
    """Guess on the top/bottom r/2 scores for each r of ``guess_counts``; keep the best bound.

    ``beta`` is split evenly over the guess counts tried (Bonferroni), so the best of them is
    still a (1 - beta)-confidence bound.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = scores.size
    order = np.argsort(-scores, kind="stable")
    counts = guess_counts(m)
    level = beta / len(counts)
    best: dict[str, float | int] = {"epsilon": -1.0}
    for r in counts:
        top, bottom = order[: r // 2], order[m - r // 2:]
        correct = int(included[top].sum() + (~included[bottom]).sum())
        eps = epsilon_lower_bound(correct, r, beta=level, delta=delta, canaries=m)
        if eps > best["epsilon"]:
            best = {"epsilon": eps, "guesses": r, "correct": correct}
    best["level"] = level
    best["max_provable"] = epsilon_lower_bound(counts[0], counts[0], beta=level, delta=delta,
                                               canaries=m)
    return best


MAX_CANARIES = 10**12


def canaries_needed(epsilon: float, *, beta: float) -> int:
    """Canaries with which all-correct guessing would prove ``epsilon`` (delta ignored).

    All r guesses right has probability p^r under the claim, p = 1 / (1 + e^-eps); it drops
    below ``beta`` once r >= log(beta) / log(p). Capped at MAX_CANARIES for huge epsilons.
    """
    log_p = -math.log1p(math.exp(-epsilon))
    if log_p == 0.0:
        return MAX_CANARIES
    return min(MAX_CANARIES, math.ceil(math.log(beta) / log_p))


__all__ = ["MAX_CANARIES", "best_guesses", "canaries_needed", "correct_guess_tail", "epsilon_lower_bound",
           "guess_counts"]
