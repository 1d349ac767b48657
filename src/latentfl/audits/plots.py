"""Figures for the audit reports, drawn with matplotlib's Agg backend into PNG bytes."""

from __future__ import annotations

import io
import math

import numpy as np

from latentfl.audits.roc import RocCurve


def _figure(width: float = 6.4, height: float = 3.6):  # noqa: ANN202 - matplotlib types
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def distance_histogram(to_private: np.ndarray, to_holdout: np.ndarray,
                       holdout_to_private: np.ndarray, *, xlabel: str, title: str) -> bytes:
    """Synthetic images' nearest distances to T and to H, over holdout images' distances to T."""
    fig = _figure()
    ax = fig.add_subplot()
    every = np.concatenate([to_private, to_holdout, holdout_to_private])
    bins = np.linspace(0.0, float(every.max()) * 1.02 + 1e-9, 40)
    ax.hist(holdout_to_private, bins=bins, density=True, color="#bbbbbb",
            label="holdout image -> nearest training image (clean reference)")
    ax.hist(to_private, bins=bins, density=True, histtype="step", lw=2, color="#c0392b",
            label="synthetic image -> nearest training image")
    ax.hist(to_holdout, bins=bins, density=True, histtype="step", lw=2, color="#2c7fb8",
            label="synthetic image -> nearest holdout image")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return _png(fig)


def roc_plot(curves: dict[str, RocCurve], *, title: str,
             dp_claim: tuple[float, float] | None = None) -> bytes:
    """ROC curves on log-log axes, with the chance diagonal and, if claimed, the DP bound."""
    fig = _figure(5.2, 4.2)
    ax = fig.add_subplot()
    floor = 1.0 / max(max(c.num_nonmembers, c.num_members) for c in curves.values()) / 2
    grid = np.logspace(math.log10(floor), 0, 200)
    ax.plot(grid, grid, ls="--", color="#888888", lw=1, label="chance (TPR = FPR)")
    if dp_claim is not None:
        eps, delta = dp_claim
        ax.plot(grid, np.minimum(1.0, math.exp(eps) * grid + delta), ls=":", color="#000000",
                lw=1.5, label=f"DP bound, eps={eps:g}, delta={delta:g}")
    for name, c in curves.items():
        ax.step(np.maximum(c.fpr, floor), np.maximum(c.tpr, floor), where="post", lw=1.8,
                label=f"{name}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(floor, 1.05)
    ax.set_xlabel("false positive rate (non-members called members)")
    ax.set_ylabel("true positive rate (members found)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def score_histogram(member_scores: np.ndarray, nonmember_scores: np.ndarray, *,
                    xlabel: str, title: str) -> bytes:
    """Overlapping histograms of an attack's scores on members and on non-members."""
    fig = _figure()
    ax = fig.add_subplot()
    lo = float(min(member_scores.min(), nonmember_scores.min()))
    hi = float(max(member_scores.max(), nonmember_scores.max()))
    bins = np.linspace(lo, hi + 1e-9, 40)
    ax.hist(nonmember_scores, bins=bins, density=True, alpha=0.5, color="#2c7fb8",
            label="non-members (never trained on)")
    ax.hist(member_scores, bins=bins, density=True, alpha=0.5, color="#c0392b",
            label="members (trained on)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _png(fig)


__all__ = ["distance_histogram", "roc_plot", "score_histogram"]
