"""One row of a report's verdict table, shared by the synthetic-data and model audits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """A metric's measured value, the threshold it is judged by and whether it raised a flag.

    ``status`` is ``"flag"`` (evidence of leakage, or a broken DP guarantee), ``"pass"`` (no
    evidence, with samples large enough to have seen it), ``"inconclusive"`` (no evidence, but
    too few examples to resolve what was asked; the numbers say how many are needed), or
    ``"info"`` (reported for context, never flags). ``p_value`` is the chance of a result at
    least this extreme on a clean set, when the metric has a test; ``alpha`` the level it was
    tested at (already divided by the number of tests in the report).
    """

    metric: str
    title: str
    value: str
    threshold: str
    calibration: str
    status: str
    baseline: str = ""
    p_value: float | None = None
    alpha: float | None = None
    explanation: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        return self.status == "flag"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(p_value: float, alpha: float) -> str:
    """``"flag"`` when the p-value is below the per-test level, else ``"pass"``."""
    return "flag" if p_value < alpha else "pass"


def format_p(p: float | None) -> str:
    if p is None:
        return ""
    if p < 1e-4:
        return f"< 0.0001 ({p:.0e})"
    return f"{p:.4f}"


__all__ = ["Verdict", "decide", "format_p"]
