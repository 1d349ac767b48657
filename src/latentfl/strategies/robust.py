"""Byzantine-robust aggregation rules: pure functions over one round's update deltas.

Every rule takes ``deltas``, an (n, P) float64 matrix whose row i is participant i's update
minus the round's starting weights (flattened), and returns a :class:`RuleResult`: the
aggregated delta (P,) and the updates it set aside, each with the rule, a score and the threshold
the score crossed, so an operator can see why. Claimed example counts play no part: under a
robust rule every accepted update counts once, so a site cannot buy influence by inflating
``num_examples``.

- ``median``: coordinate-wise median (Yin et al. 2018).
- ``trimmed_mean``: per coordinate, drop the ``floor(beta n)`` largest and smallest values,
  average the rest (Yin et al. 2018).
- ``krum`` / ``multi_krum``: score each update by the summed squared distance to its
  ``n - f - 2`` nearest others; keep the lowest-scoring one (Krum) or ``m`` of them
  (Multi-Krum), average what is kept (Blanchard et al. 2017).
- ``bulyan``: choose ``n - 2f`` updates by repeated Krum, then per coordinate average the
  ``n - 4f`` values closest to their median (El Mhamdi et al. 2018); needs ``n >= 4f + 3``.
- ``norm_bound``: clip each delta to a fixed L2 bound, or a multiple of the round's median delta
  norm, then average (Sun et al. 2019).

The coordinate-wise rules (median, trimmed mean) bound every update's influence without
dropping any whole update; they report as set aside the updates whose distance from the robust
aggregate lies more than ``outlier_mads`` median absolute deviations above the median distance
(:func:`mad_outliers`, the same test FedDGM's upload screening uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latentfl.errors import ConfigError


@dataclass(frozen=True)
class SetAside:
    """One update a robust rule set aside (or clipped), and why."""

    participant: str
    rule: str
    action: str  # "excluded" (not aggregated), "clipped" (scaled down), "outlier" (bounded)
    score: float
    threshold: float

    def as_dict(self) -> dict[str, object]:
        return {"participant": self.participant, "rule": self.rule, "action": self.action,
                "score": self.score, "threshold": self.threshold}


@dataclass(frozen=True)
class RuleResult:
    """A rule's aggregated delta (P,) and the updates it set aside."""

    delta: torch.Tensor
    set_aside: tuple[SetAside, ...]


def coordinate_median(deltas: torch.Tensor) -> torch.Tensor:
    """Per-coordinate median; with an even count, the mean of the two middle values."""
    ordered = deltas.sort(dim=0).values
    n = ordered.shape[0]
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def trimmed_mean(deltas: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-coordinate mean after dropping the ``floor(beta n)`` largest and smallest values."""
    n = deltas.shape[0]
    k = int(beta * n)
    if n - 2 * k < 1:
        raise ConfigError(f"trimmed mean with beta = {beta} drops all {n} updates; expected "
                          "beta < 0.5.")
    return deltas.sort(dim=0).values[k:n - k].mean(dim=0)


def krum_scores(deltas: torch.Tensor, f: int) -> torch.Tensor:
    """Krum's score of each update: the summed squared distance to its n - f - 2 nearest."""
    n = deltas.shape[0]
    if n < 2 * f + 3:
        raise ConfigError(f"Krum with f = {f} needs at least {2 * f + 3} updates; the round "
                          f"has {n}. Lower f or wait for more updates (min_updates).")
    return _nearest_sum(_squared_distances(deltas), n - f - 2)


def _squared_distances(deltas: torch.Tensor) -> torch.Tensor:
    """(n, n) squared L2 distances between updates, infinite on the diagonal."""
    d2 = torch.cdist(deltas, deltas).pow(2)
    d2.fill_diagonal_(float("inf"))
    return d2


def _nearest_sum(d2: torch.Tensor, near: int) -> torch.Tensor:
    return d2.sort(dim=1).values[:, :near].sum(dim=1)


def mad_outliers(scores: torch.Tensor, mads: float, min_spread: float = 0.0
                 ) -> tuple[list[int], float]:
    """Indices whose score exceeds median + ``mads`` x the spread, and that threshold. The
    spread is the median absolute deviation, at least ``min_spread`` x the median (and 1e-12, so
    equal scores never fail)."""
    centre = scores.median()
    mad = (scores - centre).abs().median()
    spread = torch.maximum(mad, min_spread * centre.abs()).clamp_min(1e-12)
    threshold = float(centre + mads * spread)
    return [i for i, s in enumerate(scores.tolist()) if s > threshold], threshold


def _outliers(ids: Sequence[str], deltas: torch.Tensor, centre: torch.Tensor, rule: str,
              mads: float, action: str = "outlier", min_spread: float = 0.0
              ) -> tuple[SetAside, ...]:
    distances = (deltas - centre).norm(dim=1)
    flagged, threshold = mad_outliers(distances, mads, min_spread)
    return tuple(SetAside(ids[i], rule, action, float(distances[i]), threshold)
                 for i in flagged)


def screen_uploads(ids: Sequence[str], deltas: torch.Tensor, *, mads: float,
                   min_spread: float = 0.0) -> tuple[SetAside, ...]:
    """FedDGM's upload screening: the uploads whose change lies farther from the coordinate
    median of all changes than median + ``mads`` spreads of those distances (the spread: their
    MAD, at least ``min_spread`` x their median), to be excluded."""
    return _outliers(ids, deltas, coordinate_median(deltas), "feddgm_screening", mads,
                     action="excluded", min_spread=min_spread)


def median_rule(ids: Sequence[str], deltas: torch.Tensor, *, mads: float) -> RuleResult:
    centre = coordinate_median(deltas)
    return RuleResult(centre, _outliers(ids, deltas, centre, "median", mads))


def trimmed_mean_rule(ids: Sequence[str], deltas: torch.Tensor, *, beta: float,
                      mads: float) -> RuleResult:
    centre = trimmed_mean(deltas, beta)
    return RuleResult(centre, _outliers(ids, deltas, centre, "trimmed_mean", mads))


def krum_rule(ids: Sequence[str], deltas: torch.Tensor, *, f: int, keep: int,
              rule: str = "krum") -> RuleResult:
    """Average the ``keep`` updates with the lowest Krum scores (keep = 1: Krum)."""
    scores = krum_scores(deltas, f)
    order = scores.argsort().tolist()
    chosen, dropped = order[:keep], order[keep:]
    threshold = float(scores[chosen[-1]])
    return RuleResult(deltas[chosen].mean(dim=0), tuple(
        SetAside(ids[i], rule, "excluded", float(scores[i]), threshold) for i in dropped))


def bulyan_rule(ids: Sequence[str], deltas: torch.Tensor, *, f: int) -> RuleResult:
    """Repeated Krum chooses n - 2f updates; per coordinate, the n - 4f values nearest their
    median are averaged."""
    n = deltas.shape[0]
    if n < 4 * f + 3:
        raise ConfigError(f"Bulyan with f = {f} needs at least {4 * f + 3} updates; the round "
                          f"has {n}. Lower f, add participants or use multi_krum.")
    d2 = _squared_distances(deltas)  # once: every repeated Krum reads a block of it
    full_scores = _nearest_sum(d2, n - f - 2)
    remaining = list(range(n))
    chosen: list[int] = []
    while len(chosen) < n - 2 * f:
        # Krum among those left; near the end fewer than n - f - 2 neighbours remain
        block = d2[remaining][:, remaining]
        scores = _nearest_sum(block, max(1, len(remaining) - f - 2))
        pick = remaining[int(scores.argmin())]
        chosen.append(pick)
        remaining.remove(pick)
    selected = deltas[chosen]
    beta = len(chosen) - 2 * f
    median = coordinate_median(selected)
    nearest = (selected - median).abs().argsort(dim=0)[:beta]
    delta = selected.gather(0, nearest).mean(dim=0)
    threshold = float(full_scores[chosen].max())
    return RuleResult(delta, tuple(
        SetAside(ids[i], "bulyan", "excluded", float(full_scores[i]), threshold)
        for i in remaining))


def norm_bound_rule(ids: Sequence[str], deltas: torch.Tensor, *, clip_norm: float,
                    clip_multiple: float) -> RuleResult:
    """Clip each delta to ``clip_norm`` (or ``clip_multiple`` x the median norm when
    ``clip_norm`` is 0), then average."""
    norms = deltas.norm(dim=1)
    bound = clip_norm if clip_norm > 0 else clip_multiple * float(norms.median())
    scale = (bound / norms.clamp_min(1e-30)).clamp(max=1.0)
    clipped = tuple(SetAside(ids[i], "norm_bound", "clipped", float(norms[i]), bound)
                    for i in range(len(ids)) if float(norms[i]) > bound)
    return RuleResult((deltas * scale[:, None]).mean(dim=0), clipped)


__all__ = ["RuleResult", "SetAside", "bulyan_rule", "coordinate_median", "krum_rule",
           "krum_scores", "mad_outliers", "median_rule", "norm_bound_rule", "screen_uploads",
           "trimmed_mean", "trimmed_mean_rule"]
