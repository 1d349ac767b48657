"""The shape a shared audit must have: each report kind's own keys, checked strictly.

A participant's ``AUDIT_REPORT`` payload is strict JSON built by ``audits.shareable_aggregates``.
Its ``kind`` picks the schema, and everything else must be exactly what that kind shares:

- ``synthetic-audit``: ``kind``, ``flagged``, ``sizes`` (named counts) and up to 16 verdicts;
- ``dp-audit`` (the one-run DP audit): ``kind``, ``flagged``, ``sizes`` (``canaries``,
  ``training_examples``), ``result`` (exactly ``DP_RESULT_KEYS`` and ``DP_SETTINGS_KEYS``: counts,
  epsilons, the run's settings) and its one ``dp_one_run`` verdict, whose numbers are a known
  set. No list anywhere but the verdicts, so no per-canary score fits.

Every measurement is a finite number (or null where the audit has none, e.g. no DP claim),
labels are printable text of at most 200 characters, the whole at most 16 KiB. Anything else is
a ProtocolError ('malformed' / 'too-large').
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from latentfl.audits.shareable import (
    DP_KIND,
    DP_RESULT_KEYS,
    DP_SETTINGS_KEYS,
    SHARED_VERDICT_KEYS,
    SYNTHETIC_KIND,
)
from latentfl.errors import ProtocolError, Reason
from latentfl.platform.protocol import unpack_json

MAX_AGGREGATE_BYTES = 16 * 1024
MAX_NUMBERS = 24
MAX_LABEL = 200
_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
_LABEL = re.compile(r"[ -~]*")  # printable ASCII: rendered (escaped) in the operator's report


@dataclass(frozen=True)
class ReportSchema:
    """One report kind's shape (None: any snake_case names, up to MAX_NUMBERS)."""

    statuses: tuple[str, ...]
    max_verdicts: int
    sizes: frozenset[str] | None = None
    metrics: frozenset[str] | None = None
    verdict_numbers: frozenset[str] | None = None
    result: frozenset[str] | None = None  # None: the kind has no result object


SCHEMAS = {
    SYNTHETIC_KIND: ReportSchema(statuses=("flag", "pass", "info"), max_verdicts=16),
    DP_KIND: ReportSchema(
        statuses=("flag", "pass", "inconclusive", "info"), max_verdicts=1,
        sizes=frozenset({"canaries", "training_examples"}), metrics=frozenset({"dp_one_run"}),
        verdict_numbers=frozenset({"epsilon_lower_bound", "max_provable", "canaries", "guesses",
                                   "correct", "delta", "claimed_epsilon", "canaries_needed"}),
        result=frozenset(DP_RESULT_KEYS + DP_SETTINGS_KEYS)),
}


def _refuse(sentence: str) -> ProtocolError:
    return ProtocolError(Reason.MALFORMED, f"audit aggregate {sentence}")


def _number(value: Any, where: str, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse(f"{where} is {str(value)[:40]!r}; expected a number")
    if not math.isfinite(value):
        raise _refuse(f"{where} is {value}; expected a finite number")


def _keys(obj: Any, allowed: set[str] | frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _refuse(f"{where} is a {type(obj).__name__}; expected an object")
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise _refuse(f"{where} has unknown key(s) {[k[:40] for k in extra[:5]]}; expected only "
                      f"{sorted(allowed)}")
    return obj


def _named_numbers(obj: Any, where: str, *, optional: bool,
                   names: frozenset[str] | None = None) -> None:
    """An object of snake_case names (``names`` only, when given) to finite numbers."""
    if not isinstance(obj, dict) or len(obj) > MAX_NUMBERS:
        raise _refuse(f"{where} must be an object of at most {MAX_NUMBERS} numbers")
    if names is not None:
        _keys(obj, names, where)
    for key, value in obj.items():
        if not _NAME.fullmatch(key):
            raise _refuse(f"{where} name {key[:40]!r} is not lowercase snake_case")
        _number(value, f"{where}.{key}", optional=optional)


def _verdict(verdict: Any, where: str, schema: ReportSchema) -> None:
    _keys(verdict, set(SHARED_VERDICT_KEYS), where)
    metric = verdict.get("metric")
    if not (isinstance(metric, str) and _NAME.fullmatch(metric)
            and (schema.metrics is None or metric in schema.metrics)):
        expected = "a metric name" if schema.metrics is None else f"one of {sorted(schema.metrics)}"
        raise _refuse(f"{where}.metric is {str(metric)[:40]!r}; expected {expected}")
    if verdict.get("status") not in schema.statuses:
        raise _refuse(f"{where}.status is {str(verdict.get('status'))[:20]!r}; expected one of "
                      f"{list(schema.statuses)}")
    for label in ("title", "value"):
        text = verdict.get(label, "")
        if not (isinstance(text, str) and len(text) <= MAX_LABEL and _LABEL.fullmatch(text)):
            raise _refuse(f"{where}.{label} must be printable text of at most {MAX_LABEL} "
                          "characters")
    _number(verdict.get("p_value"), f"{where}.p_value")
    _number(verdict.get("alpha"), f"{where}.alpha")
    _named_numbers(verdict.get("numbers", {}), f"{where}.numbers", optional=True,
                   names=schema.verdict_numbers)


def validate_aggregates(data: bytes) -> dict[str, Any]:
    """Parse and check a shared audit; ProtocolError ('too-large' / 'malformed') if refused."""
    if len(data) > MAX_AGGREGATE_BYTES:
        raise ProtocolError(Reason.TOO_LARGE, f"audit aggregates are {len(data)} bytes; "
                                              f"expected at most {MAX_AGGREGATE_BYTES}")
    report = unpack_json(data, max_bytes=MAX_AGGREGATE_BYTES)
    kind = report.get("kind") if isinstance(report, dict) else None
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise _refuse(f"kind is {str(kind)[:40]!r}; expected one of {sorted(SCHEMAS)}")
    top = {"kind", "flagged", "sizes", "verdicts"} | ({"result"} if schema.result else set())
    _keys(report, top, "report")
    if not isinstance(report.get("flagged"), bool):
        raise _refuse("'flagged' is missing or not a boolean")
    _named_numbers(report.get("sizes", {}), "sizes", optional=False, names=schema.sizes)
    if schema.result is not None:
        result = report.get("result")
        if not isinstance(result, dict) or set(result) != schema.result:
            raise _refuse(f"result must hold exactly {sorted(schema.result)}")
        _named_numbers(result, "result", optional=True)
    verdicts = report.get("verdicts")
    if not isinstance(verdicts, list) or not 1 <= len(verdicts) <= schema.max_verdicts:
        raise _refuse(f"verdicts must be a list of 1 to {schema.max_verdicts} objects")
    for i, verdict in enumerate(verdicts):
        _verdict(verdict, f"verdicts[{i}]", schema)
    if report["flagged"] != any(v["status"] == "flag" for v in verdicts):
        raise _refuse("'flagged' disagrees with the verdicts' statuses")
    return report


__all__ = ["MAX_AGGREGATE_BYTES", "SCHEMAS", "ReportSchema", "validate_aggregates"]
