"""TASK, UPDATE and the CKKS kinds' payloads <-> the strategies' Task and Update objects.

Format decision (one payload per message, as DESIGN.md's envelope has it): the payload is the
weights as safetensors bytes (``pack_tensors``); the small structured part rides in the signed
header's ``meta`` as scalars, JSON-encoded where it is a structure:

    TASK    meta: the task's options (:class:`~latentfl.platform.protocol.TaskOptions`:
            training settings, model spec, aggregation mode, update form, manifest digest,
            the coordinator's method where the agent's HELLO says it decodes it)
    UPDATE  meta.num_examples, meta.num_steps (integers), meta.metrics (JSON of floats),
            meta.class_counts (examples per label as "3,0,2", or null when not shared),
            meta.epsilon (the participant's spent DP epsilon, or null without DP-SGD) and, with
            DP-SGD, the ledger's delta, noise_multiplier, sample_rate, max_grad_norm, dp_steps

``ckks`` mode adds three kinds (see :mod:`latentfl.privacy.ckks`); each carries the secagg
exchange's ``meta.attempt``:

    ENCRYPTED_UPDATE  an UPDATE's meta; the payload is ciphertexts (``ckks/00000``, ... uint8)
            of the limbs of the participant's secagg-masked words (``encrypt_masked``)
    DECRYPT_TASK  the payload is the coordinator's encrypted *sum* of them, with meta.length
            (masked words) and meta.cohort (uploads summed)
    AGGREGATE  the designated participant's answer: meta.cohort and, as payload, the tensor
            ``limb_sums`` (int64, 2 * length): the decrypted limb sums rounded to integers

Everything read from a peer is parsed strictly and refused with ProtocolError: a meta key the
kind does not define, the JSON parts through the config schemas (unknown keys, wrong types,
bounds), the tensors against the manifest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from latentfl.errors import ProtocolError, Reason
from latentfl.platform.protocol import (
    Kind,
    Message,
    TaskOptions,
    UpdateForm,
    canonical_json,
    check_meta_keys,
    pack_tensors,
    unpack_json,
    unpack_tensors,
)
from latentfl.platform.wire.secagg import attempt_of
from latentfl.privacy.ckks import (
    LIMB_BITS,
    LIMBS_PER_WORD,
    MAX_COHORT,
    ciphertexts_from_tensors,
    ciphertexts_to_tensors,
)
from latentfl.strategies import ModelSpec, Task, Update


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


def encode_task(task: Task, model: ModelSpec, manifest_digest: str,
                accepted: Collection[str] = ()) -> tuple[bytes, dict]:
    """(payload, header meta) of a TASK; ``accepted``: the gated meta keys the participant
    decodes (``GATED_TASK_META``, from its HELLO), the others are left out."""
    update = UpdateForm.NORMALISED if task.normalised_update else UpdateForm.WEIGHTS
    options = TaskOptions(task.train, model, task.aggregation, manifest_digest, update,
                          method=task.method if "method" in accepted else None)
    return pack_tensors(task.weights), options.meta()


def decode_task(message: Message, *, max_bytes: int) -> tuple[Task, ModelSpec]:
    """The Task and surrogate ModelSpec of a verified TASK message; ProtocolError if refused."""
    options = TaskOptions.from_meta(message.header.meta)
    manifest = options.model.manifest()
    if options.manifest != manifest.digest:
        raise ProtocolError(
            Reason.MANIFEST,
            f"TASK manifest digest {options.manifest!r} differs "
            f"from the model built from its spec ({manifest.digest}).",
        )
    weights = unpack_tensors(message.payload, manifest, max_bytes)
    return Task(message.header.round, weights, options.train, options.aggregation,
                options.update is UpdateForm.NORMALISED, options.method), options.model


_COUNTS = re.compile(r"[0-9]{1,15}(,[0-9]{1,15})*")

PRIVACY_META = ("epsilon", "delta", "noise_multiplier", "sample_rate", "max_grad_norm", "dp_steps")
"""The ledger report fields an UPDATE's signed header carries (PrivacyLedger.report())."""
UPDATE_META = ("num_examples", "num_steps", "metrics", "class_counts", "epsilon")
"""The meta keys every update carries; the other PRIVACY_META fields come with DP-SGD."""


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


LIMB_SUMS_TENSOR = "limb_sums"


@dataclass(frozen=True)
class DecryptTask:
    """The coordinator's request to decrypt the encrypted sum of ``cohort`` masked uploads."""

    round: int
    attempt: str
    ciphertexts: list[bytes]
    length: int
    cohort: int


def encode_decrypt_task(ciphertexts: Sequence[bytes], *, length: int,
                        cohort: int) -> tuple[bytes, dict]:
    """(payload, meta) of a DECRYPT_TASK carrying the encrypted sum of ``cohort`` uploads."""
    meta = {"length": int(length), "cohort": int(cohort)}
    return pack_tensors(ciphertexts_to_tensors(ciphertexts)), meta


def decode_decrypt_task(message: Message, *, max_bytes: int) -> DecryptTask:
    """The DecryptTask of a verified DECRYPT_TASK; ProtocolError if refused."""
    meta = message.header.meta
    check_meta_keys(Kind.DECRYPT_TASK, meta, required=("length", "cohort", "attempt"))
    length, cohort = _int_meta(meta, "length"), _int_meta(meta, "cohort")
    if length < 1:
        raise ProtocolError(Reason.MALFORMED, "DECRYPT_TASK length = 0; expected >= 1.")
    if not 2 <= cohort <= MAX_COHORT:
        raise ProtocolError(Reason.MIN_COHORT, f"DECRYPT_TASK covers {cohort} upload(s); "
                                               f"expected 2 to {MAX_COHORT}.")
    blobs = ciphertexts_from_tensors(unpack_tensors(message.payload, None, max_bytes))
    return DecryptTask(message.header.round, attempt_of(message), blobs, length, cohort)


def encode_limb_sums(limb_sums: np.ndarray, *, cohort: int) -> tuple[bytes, dict]:
    """(payload, meta) of the decryptor's AGGREGATE: the integer limb sums."""
    return pack_tensors({LIMB_SUMS_TENSOR: torch.from_numpy(limb_sums.astype(np.int64))}), \
        {"cohort": int(cohort)}


def decode_limb_sums(message: Message, *, length: int, cohort: int,
                     max_bytes: int) -> np.ndarray:
    """The limb sums (int64) of a verified AGGREGATE answering a sum of ``cohort`` uploads of
    ``length`` words; ProtocolError unless their shape and range fit such a sum."""
    check_meta_keys(Kind.AGGREGATE, message.header.meta, required=("cohort", "attempt"))
    tensors = unpack_tensors(message.payload, None, max_bytes)
    t = tensors.get(LIMB_SUMS_TENSOR)
    if set(tensors) != {LIMB_SUMS_TENSOR} or t is None or t.dtype != torch.int64 \
            or tuple(t.shape) != (LIMBS_PER_WORD * length,):
        raise ProtocolError(Reason.MANIFEST, f"AGGREGATE must hold one int64 tensor "
                                             f"{LIMB_SUMS_TENSOR!r} of shape "
                                             f"({LIMBS_PER_WORD * length},).")
    sums = t.numpy()
    if message.header.meta.get("cohort") != cohort or sums.min() < 0 \
            or sums.max() > cohort * (2**LIMB_BITS - 1):
        raise ProtocolError(Reason.MALFORMED, f"AGGREGATE limb sums do not fit a sum of {cohort} "
                                              f"uploads (each in [0, {cohort} * (2^32 - 1)]).")
    return sums


def decode_update(message: Message, manifest: Any, *, max_bytes: int) -> Update:
    """The Update of a verified UPDATE message; ProtocolError 'malformed', 'non-finite' or
    'manifest' if refused."""
    meta = message.header.meta
    masked = message.header.kind in (Kind.MASKED_UPDATE, Kind.ENCRYPTED_UPDATE)
    check_meta_keys(message.header.kind, meta,
                    required=UPDATE_META + (("attempt",) if masked else ()),
                    optional=PRIVACY_META)
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
    "LIMB_SUMS_TENSOR",
    "DecryptTask",
    "decode_decrypt_task",
    "decode_limb_sums",
    "decode_task",
    "decode_update",
    "encode_decrypt_task",
    "encode_limb_sums",
    "encode_task",
    "encode_update",
]
