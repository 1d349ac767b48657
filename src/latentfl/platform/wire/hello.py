"""A HELLO's payload: the site's data summary and what it states about itself.

A JSON object (``pack_json``):

    num_examples  its training examples (an integer >= 0)
    class_counts  examples per label, absent when the site withholds them
    max_epsilon   its own privacy budget (``[privacy.policy] max_epsilon``): a finite number
                  in (0, MAX_EPSILON], or null for "no budget set"; absent from older agents
    task_meta     the optional TASK meta keys this agent decodes (:data:`GATED_TASK_META`):
                  the coordinator sends a gated key only to an agent that lists it, since an
                  older agent's strict TASK decoder refuses a key it does not know

The coordinator reads strictly the fields it acts on (``max_epsilon``, ``task_meta``: a wrong
type or bound is a ProtocolError 'malformed'); a key it does not know is left alone, so an
agent and a coordinator of different releases still greet each other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from latentfl.errors import ProtocolError, Reason
from latentfl.platform.protocol import GATED_TASK_META, pack_json, unpack_json

MAX_EPSILON = 1e6
_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class HelloSummary:
    """What a HELLO says (see the module docstring)."""

    num_examples: int | None = None
    #: whether the HELLO stated a budget at all (False: an agent older than the field)
    budget_stated: bool = False
    max_epsilon: float | None = None
    task_meta: frozenset[str] = frozenset()


def encode_hello(summary: Mapping[str, Any], *, max_epsilon: float | None) -> bytes:
    """The HELLO payload of a site's data ``summary``, its budget and the gated TASK keys this
    release decodes."""
    return pack_json({**summary, "max_epsilon": max_epsilon,
                      "task_meta": sorted(GATED_TASK_META)})


def decode_hello(payload: bytes) -> HelloSummary:
    """The HelloSummary of a HELLO payload (an empty one says nothing); ProtocolError
    'malformed' for a budget or task_meta that is not what the module docstring says."""
    if not payload:
        return HelloSummary()
    data = unpack_json(payload)
    examples = data.get("num_examples")
    return HelloSummary(num_examples=examples if type(examples) is int and examples >= 0
                        else None,
                        budget_stated="max_epsilon" in data,
                        max_epsilon=_budget(data.get("max_epsilon")),
                        task_meta=_task_meta(data.get("task_meta", [])))


def _budget(value: Any) -> float | None:
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not 0 < value <= MAX_EPSILON):
        raise ProtocolError(Reason.MALFORMED, f"HELLO max_epsilon is {str(value)[:40]!r}; "
                                              f"expected null or a number in (0, {MAX_EPSILON:g}].")
    return float(value)


def _task_meta(value: Any) -> frozenset[str]:
    if (not isinstance(value, list) or len(value) > 16
            or not all(isinstance(k, str) and _KEY.fullmatch(k) for k in value)):
        raise ProtocolError(Reason.MALFORMED, f"HELLO task_meta is {str(value)[:80]!r}; expected "
                                              "a list of at most 16 meta key names.")
    return frozenset(value)


def accepted_task_meta(hello: HelloSummary | None) -> Collection[str]:
    """The gated TASK keys a participant whose HELLO was ``hello`` decodes (none if unknown)."""
    return GATED_TASK_META & hello.task_meta if hello is not None else frozenset()


__all__ = ["MAX_EPSILON", "HelloSummary", "accepted_task_meta", "decode_hello", "encode_hello"]
