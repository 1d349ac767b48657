"""Strict, canonical JSON: the one encoding of headers and small structured payloads.

Every JSON value a peer sends (headers, JSON payloads, JSON in header meta, safetensors
headers) is parsed by :func:`strict_json`, which applies the protocol's one rule for fields:
integers within +-2^53 (exact in every JSON reader), floats finite, strings valid UTF-8 with no
lone surrogates and at most ``MAX_STRING_CHARS`` characters, nesting at most ``MAX_DEPTH``
deep and no object or array over ``MAX_ENTRIES`` entries. A value that breaks it is refused as
``malformed`` before any code looks at it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from latentfl.errors import ProtocolError, Reason

MAX_SAFE_INT = 2**53
MAX_STRING_CHARS = 16384
MAX_DEPTH = 16
MAX_ENTRIES = 8192


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, ASCII only, no NaN or Infinity: equal values give equal bytes."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        keys = [k for k, _ in pairs]
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key {dup[:60]!r} appears more than once")
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _string_problem(text: str) -> str | None:
    if len(text) > MAX_STRING_CHARS:
        return f"a string of {len(text)} characters; at most {MAX_STRING_CHARS}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"string {text[:40]!r} holds a lone surrogate; expected valid Unicode"
    return None


def field_problem(value: Any, depth: int = 0) -> str | None:
    """What breaks the protocol's field rule in a decoded JSON ``value`` (None when nothing)."""
    if depth > MAX_DEPTH:
        return f"nesting deeper than {MAX_DEPTH} levels"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            return None
        return f"integer {str(value)[:24]}... is outside +-2^53"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"number {value!r} is not finite"
    if isinstance(value, str):
        return _string_problem(value)
    if isinstance(value, (list, dict)):
        if len(value) > MAX_ENTRIES:
            return f"a collection of {len(value)} entries; at most {MAX_ENTRIES}"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            problem = (_string_problem(key) if isinstance(key, str) else None) or field_problem(
                item, depth + 1
            )
            if problem is not None:
                return problem
        return None
    return f"a {type(value).__name__}, which is not a JSON value"


def strict_json(data: bytes, *, what: str, max_bytes: int) -> Any:
    """Parse ``data`` as JSON, refusing oversize input, bad UTF-8, duplicate keys, NaN and any
    value that breaks the field rule (see the module docstring); ProtocolError when refused."""
    if len(data) > max_bytes:
        raise ProtocolError(
            Reason.TOO_LARGE, f"{what} is {len(data)} bytes; expected at most {max_bytes}"
        )
    try:
        obj = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(Reason.MALFORMED, f"{what} is not strict JSON ({exc})") from None
    problem = field_problem(obj)
    if problem is not None:
        raise ProtocolError(Reason.MALFORMED, f"{what} holds {problem}")
    return obj


__all__ = [
    "MAX_DEPTH",
    "MAX_ENTRIES",
    "MAX_SAFE_INT",
    "MAX_STRING_CHARS",
    "canonical_json",
    "field_problem",
    "strict_json",
]
