"""What of an audit may leave the site: aggregate numbers and short labels only.

A participant builds the part of an audit report it may send to the coordinator with
:func:`shareable_aggregates`: the verdicts (metric, status, p-value, level, counts), the sizes
and, for the one-run DP audit, its result (canary and guess counts, the epsilons and the audited
run's settings). Never an image, an index or a per-example (per-canary) score. The coordinator
accepts exactly these keys (``platform/coordinator/audits/schema.py`` imports them from here),
so both sides read the shape from one place.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Report kinds a participant may share, as the reports name themselves.
SYNTHETIC_KIND = "synthetic-audit"
DP_KIND = "dp-audit"
#: The keys of one shared verdict.
SHARED_VERDICT_KEYS = ("metric", "title", "value", "status", "p_value", "alpha", "numbers")
#: The one-run DP audit's numbers (``dp_audit.DPAudit``), all aggregate.
DP_RESULT_KEYS = ("canaries", "canaries_included", "training_examples", "guesses", "correct",
                  "epsilon_lower_bound", "max_provable", "confidence", "accountant_epsilon",
                  "claimed_epsilon", "delta", "noise_multiplier", "steps")
#: The audited run's settings, taken from the report's context.
DP_SETTINGS_KEYS = ("epochs", "batch_size", "max_grad_norm")


def json_safe(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, non-finite floats to strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    return value


def numbers_only(aggregates: dict[str, Any]) -> dict[str, Any]:
    """The aggregates with every non-finite number (written as text by the reports) set to null,
    so the coordinator's strict JSON takes them."""
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    def nulls(table: dict[str, Any]) -> dict[str, Any]:
        return {k: (None if isinstance(v, str) else v) for k, v in table.items()}

    out = clean(aggregates)
    for verdict in out.get("verdicts", []):
        for key in ("p_value", "alpha"):
            if isinstance(verdict.get(key), str):
                verdict[key] = None
        verdict["numbers"] = nulls(verdict.get("numbers") or {})
    if "result" in out:
        out["result"] = nulls(out["result"])
    return out


def shareable_aggregates(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers a participant may send to the coordinator from an audit report's JSON:
    verdicts and sizes (and the DP audit's result), no images, indices or per-example scores."""
    out: dict[str, Any] = {
        "kind": report["kind"], "flagged": report["flagged"], "sizes": report.get("sizes", {}),
        "verdicts": [{k: v.get(k) for k in SHARED_VERDICT_KEYS} for v in report["verdicts"]],
    }
    if report["kind"] == DP_KIND:
        result, context = report["result"], report.get("context", {})
        out["result"] = {**{k: result.get(k) for k in DP_RESULT_KEYS},
                         **{k: context.get(k) for k in DP_SETTINGS_KEYS}}
    return numbers_only(json_safe(out))


__all__ = ["DP_KIND", "DP_RESULT_KEYS", "DP_SETTINGS_KEYS", "SHARED_VERDICT_KEYS",
           "SYNTHETIC_KIND", "json_safe", "numbers_only", "shareable_aggregates"]
