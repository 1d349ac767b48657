"""Strict, canonical JSON: the one encoding of headers and small structured payloads."""

from __future__ import annotations

import json
from typing import Any

from latentfl.errors import ProtocolError, Reason


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
        raise ValueError(f"key {dup!r} appears more than once")
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def strict_json(data: bytes, *, what: str, max_bytes: int) -> Any:
    """Parse ``data`` as JSON, refusing oversize input, bad UTF-8, duplicate keys and NaN."""
    if len(data) > max_bytes:
        raise ProtocolError(
            Reason.TOO_LARGE, f"{what} is {len(data)} bytes; expected at most {max_bytes}"
        )
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(Reason.MALFORMED, f"{what} is not strict JSON ({exc})") from None


__all__ = ["canonical_json", "strict_json"]
