"""TASK, UPDATE and the CKKS kinds' payloads <-> the strategies' Task and Update objects.

Format decision (one payload per message, as DESIGN.md's envelope has it): the payload is the
weights as safetensors bytes (``pack_tensors``); the small structured part rides in the signed
header's ``meta`` as scalars, JSON-encoded where it is a structure:

    TASK    meta.train    JSON of the TrainConfig (the participant's local training settings)
            meta.model    JSON of the ModelSpec (registry name and options, never code)
            meta.aggregation  how the update will be aggregated (``Aggregation``: plain, ckks,
                          secagg)
            meta.normalised   FedNova: return the update normalised by the local step count
                          (``Task.normalised_update``)
            meta.manifest digest of the model manifest both sides check the tensors against
    UPDATE  meta.num_examples, meta.num_steps (integers), meta.metrics (JSON of floats),
            meta.class_counts (examples per label as "3,0,2", or null when not shared),
            meta.epsilon (the participant's spent DP epsilon, or null without DP-SGD) and, with
            DP-SGD, the ledger's delta, noise_multiplier, sample_rate, max_grad_norm, dp_steps

CKKS secure aggregation adds three kinds (see :mod:`latentfl.privacy.ckks`):

    ENCRYPTED_UPDATE  an UPDATE's meta; the payload is ciphertexts (``ckks/00000``, ... uint8)
            of ``num_examples * flat(weights)``, flat as :func:`flatten_state` defines it
    DECRYPT_TASK  the payload is the coordinator's encrypted *sum*, with meta.total_weight,
            meta.length, meta.cohort, meta.model and meta.manifest
    AGGREGATE  the designated participant's answer: an UPDATE's meta and, as payload, the
            plaintext weighted mean (checked against the manifest like any update)

Everything read from a peer is parsed strictly and refused with ProtocolError: the JSON parts
through the config schemas (unknown keys, wrong types, bounds), the tensors against the manifest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from latentfl.config import from_dict, to_dict
from latentfl.errors import ConfigError, ModelError, ProtocolError, Reason
from latentfl.models import ModelManifest, model_manifest
from latentfl.platform.protocol import (
    Message,
    canonical_json,
    pack_tensors,
    unpack_json,
    unpack_tensors,
)
from latentfl.privacy.ckks import ciphertexts_from_tensors, ciphertexts_to_tensors
from latentfl.strategies import Aggregation, ModelSpec, Task, Update
from latentfl.training import TrainConfig


def _json_meta(meta: dict[str, Any], key: str) -> dict[str, Any]:
    value = meta.get(key)
    if not isinstance(value, str):
        raise ProtocolError(Reason.MALFORMED, f"header meta {key!r} is {value!r}; expected a JSON "
                                              "object as a string.")
    return unpack_json(value.encode("utf-8"))


def _int_meta(meta: dict[str, Any], key: str) -> int:
    value = meta.get(key)
    if type(value) is not int or value < 0:
        raise ProtocolError(
            Reason.MALFORMED, f"header meta {key!r} is {value!r}; expected an integer >= 0."
        )
    return value


def encode_task(task: Task, model: ModelSpec, manifest_digest: str) -> tuple[bytes, dict]:
    """(payload, header meta) of a TASK."""
    meta = {
        "train": canonical_json(to_dict(task.train)).decode("ascii"),
        "model": canonical_json(to_dict(model)).decode("ascii"),
        "aggregation": task.aggregation.value,
        "manifest": manifest_digest,
        "normalised": task.normalised_update,
    }
    return pack_tensors(task.weights), meta


def decode_task(message: Message, *, max_bytes: int) -> tuple[Task, ModelSpec]:
    """The Task and surrogate ModelSpec of a verified TASK message; ProtocolError if refused."""
    meta = message.header.meta
    try:
        train = from_dict(TrainConfig, _json_meta(meta, "train"), source="TASK train")
        spec = from_dict(ModelSpec, _json_meta(meta, "model"), source="TASK model")
        model = spec.build()
    except (ConfigError, ModelError, TypeError, ValueError) as exc:
        raise ProtocolError(Reason.MALFORMED, f"TASK settings are refused: {exc}") from None
    manifest = model_manifest(model)
    if meta.get("manifest") != manifest.digest:
        raise ProtocolError(
            Reason.MANIFEST,
            f"TASK manifest digest {meta.get('manifest')!r} differs "
            f"from the model built from its spec ({manifest.digest}).",
        )
    weights = unpack_tensors(message.payload, manifest, max_bytes)
    try:
        aggregation = Aggregation(meta.get("aggregation"))
    except ValueError:
        raise ProtocolError(
            Reason.MALFORMED,
            f"TASK aggregation is {meta.get('aggregation')!r}; "
            f"expected one of {[a.value for a in Aggregation]}.",
        ) from None
    normalised = meta.get("normalised", False)
    if not isinstance(normalised, bool):
        raise ProtocolError(Reason.MALFORMED, f"TASK normalised is {normalised!r}; expected "
                                              "true or false.")
    return Task(message.header.round, weights, train, aggregation, normalised), spec


_COUNTS = re.compile(r"[0-9]{1,15}(,[0-9]{1,15})*")

PRIVACY_META = ("epsilon", "delta", "noise_multiplier", "sample_rate", "max_grad_norm", "dp_steps")
"""The ledger report fields an UPDATE's signed header carries (PrivacyLedger.report())."""


def _update_meta(update: Update, privacy: Mapping[str, Any] | None) -> dict:
    metrics = {k: float(v) for k, v in update.metrics.items() if math.isfinite(float(v))}
    meta: dict[str, Any] = {
        "num_examples": int(update.num_examples),
        "num_steps": int(update.num_steps),
        "metrics": canonical_json(metrics).decode("ascii"),
        "class_counts": None if update.class_counts is None
        else ",".join(str(int(c)) for c in update.class_counts),
        "epsilon": None,
    }
    for key in PRIVACY_META:
        value = (privacy or {}).get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            meta[key] = value
    return meta


def encode_update(update: Update, privacy: Mapping[str, Any] | None = None) -> tuple[bytes, dict]:
    """(payload, header meta) of an UPDATE; ``privacy`` is the ledger's report, if any."""
    return pack_tensors(update.weights), _update_meta(update, privacy)


def encode_encrypted_update(update: Update, ciphertexts: Sequence[bytes],
                            privacy: Mapping[str, Any] | None = None) -> tuple[bytes, dict]:
    """(payload, meta) of a CKKS UPDATE: ``ciphertexts`` replace the weights in the payload."""
    return pack_tensors(ciphertexts_to_tensors(ciphertexts)), _update_meta(update, privacy)


def decode_encrypted_update(message: Message, *, max_bytes: int) -> tuple[Update, list[bytes]]:
    """The Update (its weights are the ciphertext tensors, for the store) and the ciphertexts
    of a verified CKKS UPDATE; the caller checks the ciphertexts against its public context."""
    meta = message.header.meta
    num_examples, num_steps = _int_meta(meta, "num_examples"), _int_meta(meta, "num_steps")
    if num_examples < 1:
        raise ProtocolError(Reason.MALFORMED, "UPDATE num_examples is 0; expected at least 1.")
    tensors = unpack_tensors(message.payload, None, max_bytes)
    blobs = ciphertexts_from_tensors(tensors)
    return Update(participant=message.header.sender, round=message.header.round,
                  weights=tensors, num_examples=num_examples, num_steps=num_steps,
                  class_counts=_class_counts(meta)), blobs


def _class_counts(meta: dict[str, Any]) -> tuple[int, ...] | None:
    """An UPDATE's class counts (None when not shared); ProtocolError 'malformed' if wrong."""
    text = meta.get("class_counts")
    if text is None:
        return None
    if not (isinstance(text, str) and _COUNTS.fullmatch(text)):
        raise ProtocolError(
            Reason.MALFORMED,
            f"UPDATE class_counts is {str(text)[:60]!r}; expected "
            "integers >= 0 separated by commas.",
        )
    return tuple(int(c) for c in text.split(","))


def flatten_state(tensors: Mapping[str, torch.Tensor], manifest: ModelManifest) -> torch.Tensor:
    """The one flattening CKKS uses: every manifest tensor, in manifest order, as float64."""
    return torch.cat([tensors[name].detach().reshape(-1).to("cpu", torch.float64)
                      for name, _, _ in manifest.entries])


def unflatten_state(flat: torch.Tensor, manifest: ModelManifest) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten_state` (new tensors, each in its manifest dtype)."""
    out, at = {}, 0
    for name, shape, dtype in manifest.entries:
        n = math.prod(shape)
        out[name] = flat[at:at + n].reshape(shape).to(getattr(torch, dtype)).clone()
        at += n
    if at != flat.numel():
        raise ModelError(f"flat state has {flat.numel()} values; the manifest needs {at}.")
    return out


def state_length(manifest: ModelManifest) -> int:
    """Values :func:`flatten_state` gives for ``manifest``."""
    return sum(math.prod(shape) for _, shape, _ in manifest.entries)


@dataclass(frozen=True)
class DecryptTask:
    """The coordinator's request to decrypt a CKKS sum (never an individual update)."""

    round: int
    ciphertexts: list[bytes]
    total_weight: int
    length: int
    cohort: int
    model: ModelSpec


def encode_decrypt_task(ciphertexts: Sequence[bytes], *, total_weight: int, length: int,
                        cohort: int, model: ModelSpec,
                        manifest_digest: str) -> tuple[bytes, dict]:
    """(payload, meta) of a DECRYPT_TASK carrying the encrypted sum of ``cohort`` updates."""
    meta = {"total_weight": int(total_weight), "length": int(length),
            "cohort": int(cohort), "manifest": manifest_digest,
            "model": canonical_json(to_dict(model)).decode("ascii")}
    return pack_tensors(ciphertexts_to_tensors(ciphertexts)), meta


def decode_decrypt_task(message: Message, *, max_bytes: int) -> DecryptTask:
    """The DecryptTask of a verified DECRYPT_TASK; ProtocolError if refused."""
    meta = message.header.meta
    total, length, cohort = (_int_meta(meta, k) for k in ("total_weight", "length", "cohort"))
    if total < 1 or length < 1:
        raise ProtocolError(Reason.MALFORMED, f"DECRYPT_TASK total_weight = {total}, length = "
                                              f"{length}; expected both >= 1.")
    if cohort < 2:
        raise ProtocolError(Reason.MIN_COHORT, f"DECRYPT_TASK covers {cohort} update(s); a sum of "
                                               "fewer than 2 is an individual update, refused.")
    try:
        spec = from_dict(ModelSpec, _json_meta(meta, "model"), source="TASK model")
    except ConfigError as exc:
        raise ProtocolError(Reason.MALFORMED, f"DECRYPT_TASK model is refused: {exc}") from None
    blobs = ciphertexts_from_tensors(unpack_tensors(message.payload, None, max_bytes))
    return DecryptTask(message.header.round, blobs, total, length, cohort, spec)


def decode_update(message: Message, manifest: Any, *, max_bytes: int) -> Update:
    """The Update of a verified UPDATE message; ProtocolError 'malformed', 'non-finite' or
    'manifest' if refused."""
    meta = message.header.meta
    num_examples = _int_meta(meta, "num_examples")
    num_steps = _int_meta(meta, "num_steps")
    if num_examples < 1:
        raise ProtocolError(Reason.MALFORMED, "UPDATE num_examples is 0; expected at least 1.")
    metrics = _json_meta(meta, "metrics")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
        raise ProtocolError(Reason.MALFORMED, "UPDATE metrics must be numbers.")
    weights = unpack_tensors(message.payload, manifest, max_bytes)
    return Update(participant=message.header.sender, round=message.header.round,
                  weights=weights, num_examples=num_examples, num_steps=num_steps,
                  metrics={k: float(v) for k, v in metrics.items()},
                  class_counts=_class_counts(meta))


__all__ = [
    "PRIVACY_META",
    "DecryptTask",
    "decode_decrypt_task",
    "decode_encrypted_update",
    "decode_task",
    "decode_update",
    "encode_decrypt_task",
    "encode_encrypted_update",
    "encode_task",
    "encode_update",
    "flatten_state",
    "state_length",
    "unflatten_state",
]
