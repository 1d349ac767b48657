"""TASK and UPDATE messages <-> the strategies' Task and Update objects.

Format decision (one payload per message, as DESIGN.md's envelope has it): the payload is the
weights as safetensors bytes (``pack_tensors``); the small structured part rides in the signed
header's ``meta`` as scalars, JSON-encoded where it is a structure:

    TASK    meta.train    JSON of the TrainConfig (the participant's local training settings)
            meta.model    JSON of the ModelSpec (registry name and options, never code)
            meta.extra    JSON of Task.extra (at most 1024 characters: large state goes in tensors)
            meta.manifest digest of the model manifest both sides check the tensors against
    UPDATE  meta.num_examples, meta.num_steps (integers), meta.metrics (JSON of floats),
            meta.epsilon (the participant's spent DP epsilon, or null)

Everything read from a peer is parsed strictly and refused with ProtocolError: the JSON parts
through the config schemas (unknown keys, wrong types, bounds), the tensors against the manifest.
"""

from __future__ import annotations

import math
from typing import Any

from latentfl.config import from_dict, to_dict
from latentfl.errors import ConfigError, ModelError, ProtocolError
from latentfl.platform.protocol import Message, pack_tensors, unpack_json, unpack_tensors
from latentfl.platform.protocol._json import canonical_json
from latentfl.strategies import ModelSpec, Task, Update
from latentfl.training import TrainConfig


def _json_meta(meta: dict[str, Any], key: str) -> dict[str, Any]:
    value = meta.get(key)
    if not isinstance(value, str):
        raise ProtocolError("malformed", f"header meta {key!r} is {value!r}; expected a JSON "
                                         "object as a string.")
    return unpack_json(value.encode("utf-8"))


def _int_meta(meta: dict[str, Any], key: str) -> int:
    value = meta.get(key)
    if type(value) is not int or value < 0:
        raise ProtocolError("malformed", f"header meta {key!r} is {value!r}; expected an integer "
                                         ">= 0.")
    return value


def encode_task(task: Task, model: ModelSpec, manifest_digest: str) -> tuple[bytes, dict]:
    """(payload, header meta) of a TASK."""
    meta = {
        "train": canonical_json(to_dict(task.train)).decode("ascii"),
        "model": canonical_json(to_dict(model)).decode("ascii"),
        "extra": canonical_json(dict(task.extra)).decode("ascii"),
        "manifest": manifest_digest,
    }
    return pack_tensors(task.weights), meta


def decode_task(message: Message, *, max_bytes: int) -> tuple[Task, ModelSpec]:
    """The Task and surrogate ModelSpec of a verified TASK message; ProtocolError if refused."""
    from latentfl.models import model_manifest

    meta = message.header.meta
    try:
        train = from_dict(TrainConfig, _json_meta(meta, "train"), source="TASK train")
        spec = from_dict(ModelSpec, _json_meta(meta, "model"), source="TASK model")
        model = spec.build()
    except (ConfigError, ModelError) as exc:
        raise ProtocolError("malformed", f"TASK settings are refused: {exc}") from None
    manifest = model_manifest(model)
    if meta.get("manifest") != manifest.digest:
        raise ProtocolError("manifest", f"TASK manifest digest {meta.get('manifest')!r} differs "
                                        f"from the model built from its spec ({manifest.digest}).")
    weights = unpack_tensors(message.payload, manifest, max_bytes)
    extra = _json_meta(meta, "extra")
    return Task(round=message.header.round, weights=weights, train=train, extra=extra), spec


def encode_update(update: Update, epsilon: float | None = None) -> tuple[bytes, dict]:
    """(payload, header meta) of an UPDATE."""
    metrics = {k: float(v) for k, v in update.metrics.items() if math.isfinite(float(v))}
    meta = {
        "num_examples": int(update.num_examples),
        "num_steps": int(update.num_steps),
        "metrics": canonical_json(metrics).decode("ascii"),
        "epsilon": None if epsilon is None else float(epsilon),
    }
    return pack_tensors(update.weights), meta


def decode_update(message: Message, manifest: Any, *, max_bytes: int) -> Update:
    """The Update of a verified UPDATE message; ProtocolError 'malformed', 'non-finite' or
    'manifest' if refused."""
    meta = message.header.meta
    num_examples = _int_meta(meta, "num_examples")
    num_steps = _int_meta(meta, "num_steps")
    if num_examples < 1:
        raise ProtocolError("malformed", "UPDATE num_examples is 0; expected at least 1.")
    metrics = _json_meta(meta, "metrics")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
        raise ProtocolError("malformed", "UPDATE metrics must be numbers.")
    weights = unpack_tensors(message.payload, manifest, max_bytes)
    return Update(participant=message.header.sender, round=message.header.round,
                  weights=weights, num_examples=num_examples, num_steps=num_steps,
                  metrics={k: float(v) for k, v in metrics.items()})


__all__ = ["decode_task", "decode_update", "encode_task", "encode_update"]
