"""An operator's request that a site run an audit on its own data: what it may carry.

A request names an audit the agent can run where the data lives (``dp-sgd``: the one-run DP
audit, ``audits/dp_audit.py``) and bounded options of that run; nothing else: no data, no code,
no path, no DP setting. The site audits its *own* ``[privacy.dp_sgd]`` noise, clipping and
delta; a request cannot change them. The answer is the audit's aggregate numbers
(``audits/shareable.py``), never more.

The admin client checks a request before sending it, the coordinator before storing it, and the
agent again before running it (:func:`option_problems`, :func:`parse_request`): a coordinator
cannot ask an agent for anything outside these bounds.

Wire form: the payload of ``ADMIN_REQUEST_AUDIT`` (operator to coordinator) is
``{"audit": NAME, "options": {...}}`` with the participant in ``meta.participant``; the payload of
``AUDIT_REQUEST`` (coordinator to agent) adds the coordinator's request id, ``{"request": ID,
"audit": NAME, "options": {...}}``. Both strict JSON of at most ``MAX_REQUEST_BYTES``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from latentfl.errors import ProtocolError, Reason
from latentfl.platform.protocol import pack_json, unpack_json

MAX_REQUEST_BYTES = 4096
REQUEST_ID = re.compile(r"[0-9a-f]{16}")
#: audit name -> the report kind its answer carries (``audits.shareable``)
AUDITS_ON_REQUEST = {"dp-sgd": "dp-audit"}
#: dp-sgd option -> (type, lowest, highest), inclusive; the audited run of ``audit dp-sgd``
#: (a ConvNet of this width and depth; the site's own DP-SGD settings)
DP_OPTIONS: dict[str, tuple[type, float, float]] = {
    "canaries": (int, 2, 100_000),
    "epochs": (int, 1, 100),
    "batch_size": (int, 1, 4096),
    "lr": (float, 1e-6, 10.0),
    "confidence": (float, 0.5, 0.999),
    "max_examples": (int, 1, 1_000_000),
    "seed": (int, 0, 2**31 - 1),
    "width": (int, 1, 512),
    "depth": (int, 1, 8),
    "claimed_epsilon": (float, 1e-3, 1000.0),
}


@dataclass(frozen=True)
class AuditRequest:
    """A request as the agent receives it: the coordinator's id, the audit, its options."""

    id: str
    audit: str
    options: dict[str, int | float]


def option_problems(audit: Any, options: Any) -> list[str]:
    """Every problem with a requested audit and its options (empty: it may be sent or run)."""
    if not isinstance(audit, str) or audit not in AUDITS_ON_REQUEST:  # a dict is unhashable
        return [f"audit {str(audit)[:40]!r} cannot be requested; expected one of "
                f"{sorted(AUDITS_ON_REQUEST)}"]
    if not isinstance(options, dict):
        return [f"options are a {type(options).__name__}; expected an object"]
    problems = []
    for name, value in options.items():
        bounds = DP_OPTIONS.get(name)
        if bounds is None:
            problems.append(f"option {str(name)[:40]!r} is not an option of {audit}; expected "
                            f"some of {sorted(DP_OPTIONS)}")
            continue
        kind, low, high = bounds
        numeric = (type(value) is int) if kind is int else type(value) in (int, float)
        if not numeric or not low <= value <= high:
            what = "an integer" if kind is int else "a number"
            problems.append(f"option {name} is {str(value)[:40]!r}; expected {what} from "
                            f"{low:g} to {high:g}")
    return problems


def _checked(obj: Any, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != keys:
        raise ProtocolError(Reason.MALFORMED, f"{what} is not an object with exactly the keys "
                                              f"{sorted(keys)}")
    problems = option_problems(obj["audit"], obj["options"])
    if problems:
        raise ProtocolError(Reason.MALFORMED, f"{what}: " + "; ".join(problems))
    return obj


def encode_command(audit: str, options: dict[str, int | float]) -> bytes:
    """The payload of an operator's ``ADMIN_REQUEST_AUDIT``."""
    return pack_json({"audit": audit, "options": options})


def parse_command(payload: bytes) -> tuple[str, dict[str, int | float]]:
    """(audit, options) of an ``ADMIN_REQUEST_AUDIT`` payload; ProtocolError 'malformed'."""
    obj = _checked(unpack_json(payload, max_bytes=MAX_REQUEST_BYTES), {"audit", "options"},
                   "audit request")
    return obj["audit"], obj["options"]


def encode_request(request: AuditRequest) -> bytes:
    """The payload of the coordinator's ``AUDIT_REQUEST``."""
    return pack_json({"request": request.id, "audit": request.audit, "options": request.options})


def parse_request(payload: bytes) -> AuditRequest:
    """An ``AUDIT_REQUEST`` payload, checked as strictly as the coordinator checked it."""
    obj = _checked(unpack_json(payload, max_bytes=MAX_REQUEST_BYTES),
                   {"request", "audit", "options"}, "AUDIT_REQUEST")
    if not (isinstance(obj["request"], str) and REQUEST_ID.fullmatch(obj["request"])):
        raise ProtocolError(Reason.MALFORMED, "AUDIT_REQUEST id is not 16 lowercase hex digits")
    return AuditRequest(obj["request"], obj["audit"], obj["options"])


__all__ = ["AUDITS_ON_REQUEST", "DP_OPTIONS", "MAX_REQUEST_BYTES", "REQUEST_ID", "AuditRequest",
           "encode_command", "encode_request", "option_problems", "parse_command",
           "parse_request"]
