"""The secagg kinds' payloads <-> the objects of :mod:`latentfl.privacy.secagg`.

Every secagg message carries ``meta.attempt``: the 16-hex-digit id of the round's secagg
exchange (a round planned again gets a fresh one, and with it fresh keys). Payloads:

    TASK (secagg)        meta.secagg  JSON {attempt, min_cohort, clip}: the RoundParams
    SECAGG_KEYS          JSON advert {pid, share_public, mask_public, signature} (hex)
    SECAGG_KEY_LIST      JSON {adverts: [[advert, ...], ...]} (chunks, see Size)
    SECAGG_SHARES        JSON {shares: {holder id: sealed share (hex)}}
    SECAGG_SHARE_INBOX   JSON {shares: {owner id: sealed share (hex)}}
    MASKED_UPDATE        an UPDATE whose tensors are {"secagg/masked": int64[length]} (the
                         uint64 words), with its meta (num_examples, num_steps, privacy fields)
    SECAGG_SURVIVORS     JSON {survivors: [[ids], ...]}: the set to sign (consistency round)
    SECAGG_SIGNATURE     JSON {signature: hex}: the survivor's Ed25519 signature of that set
    SECAGG_UNMASK        JSON {survivors: [[ids], ...], signatures: [{id: hex}, ...]}: the
                         certificate
    SECAGG_REVEAL        JSON {shares: [{owner, kind, index, parts: [hex, ...]}]}

Size. The key list and the certificate grow with the cohort: an advert is at most
``ENTRY_BYTES`` of JSON (an id of up to 64 characters and 256 hex digits), a certificate entry
less, so both are parsed with the bound ``MAX_PARTICIPANTS * ENTRY_BYTES`` (4 MB) instead of
the 1 MiB default of other JSON payloads, and their lists travel in chunks of ``CHUNK``
entries (strict JSON refuses a collection of more than 8192); the coordinator refuses to plan
a masked round for more than :data:`~latentfl.privacy.secagg.MAX_PARTICIPANTS` participants.

Everything read from a peer is parsed strictly; a wrong shape is ProtocolError 'malformed'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from latentfl.errors import ProtocolError, Reason
from latentfl.platform.protocol import (
    Message,
    canonical_json,
    pack_json,
    unpack_json,
)
from latentfl.privacy.secagg import MAX_PARTICIPANTS, Advert, Certificate, Revealed, RoundParams
from latentfl.privacy.secagg.keys import unhex

MASKED_TENSOR = "secagg/masked"
ENTRY_BYTES = 400
LIST_MAX_BYTES = MAX_PARTICIPANTS * ENTRY_BYTES
CHUNK = 4096
SEALED_SHARE_BYTES = 2 + 3 * 16 + 16  # index, three 16-byte shares, Poly1305 tag
_ATTEMPT = re.compile(r"[0-9a-f]{16}")


def _bad(sentence: str) -> ProtocolError:
    return ProtocolError(Reason.MALFORMED, sentence)


def _chunks(items: Sequence[Any]) -> list[list[Any]]:
    return [list(items[i:i + CHUNK]) for i in range(0, len(items), CHUNK)]


def _joined(value: Any, what: str) -> list[Any]:
    """The entries of a chunked list; ProtocolError unless it is a list of lists."""
    if not (isinstance(value, list) and all(isinstance(c, list) for c in value)):
        raise _bad(f"{what} is not a list of chunks (lists).")
    return [item for chunk in value for item in chunk]


def attempt_of(message: Message) -> str:
    """The secagg attempt id a message names; ProtocolError if it names none."""
    attempt = message.header.meta.get("attempt")
    if not (isinstance(attempt, str) and _ATTEMPT.fullmatch(attempt)):
        raise _bad(f"{message.header.kind.value} meta attempt is {attempt!r}; expected 16 hex "
                   "digits.")
    return attempt


# -- the TASK's parameters ----------------------------------------------------------------
def encode_params(attempt: str, params: RoundParams) -> dict[str, str]:
    """The TASK meta entry that tells participants how this round is masked."""
    body = {"attempt": attempt, "min_cohort": params.min_cohort, "clip": params.clip}
    return {"secagg": canonical_json(body).decode("ascii")}


def decode_params(message: Message, session: str) -> tuple[str, RoundParams]:
    """(attempt, RoundParams) of a secagg TASK; the params' session binds the attempt."""
    text = message.header.meta.get("secagg")
    if not isinstance(text, str):
        raise _bad("secagg TASK has no meta secagg; expected {attempt, min_cohort, clip}.")
    body = unpack_json(text.encode("utf-8"))
    attempt, cohort, clip = body.get("attempt"), body.get("min_cohort"), body.get("clip")
    if (set(body) != {"attempt", "min_cohort", "clip"}
            or not (isinstance(attempt, str) and _ATTEMPT.fullmatch(attempt))
            or type(cohort) is not int or cohort < 2
            or not isinstance(clip, (int, float)) or isinstance(clip, bool)
            or not 0 < clip < 2.0**30):
        raise _bad(f"secagg TASK parameters {text[:120]!r} are refused; expected attempt "
                   "(16 hex digits), min_cohort >= 2 and 0 < clip < 2^30.")
    return attempt, RoundParams(f"{session}/{attempt}", message.header.round, cohort,
                                float(clip))


# -- keys and shares ----------------------------------------------------------------------
def encode_advert(advert: Advert) -> bytes:
    return pack_json(advert.to_json())


def decode_advert(message: Message) -> Advert:
    advert = Advert.from_json(unpack_json(message.payload))
    if advert.pid != message.header.sender:
        raise _bad(f"{message.header.sender} relayed an advert of {advert.pid!r}; expected its "
                   "own.")
    return advert


def encode_key_list(adverts: Sequence[Advert]) -> bytes:
    return pack_json({"adverts": _chunks([a.to_json() for a in adverts])})


def decode_key_list(message: Message) -> list[Advert]:
    body = unpack_json(message.payload, max_bytes=LIST_MAX_BYTES)
    return [Advert.from_json(a) for a in _joined(body.get("adverts"), "SECAGG_KEY_LIST adverts")]


def encode_sealed(sealed: Mapping[str, bytes]) -> bytes:
    return pack_json({"shares": {pid: blob.hex() for pid, blob in sorted(sealed.items())}})


def decode_sealed(message: Message) -> dict[str, bytes]:
    shares = unpack_json(message.payload).get("shares")
    if not isinstance(shares, dict):
        raise _bad(f"{message.header.kind.value} has no object of shares.")
    try:
        return {str(pid): unhex(blob, SEALED_SHARE_BYTES) for pid, blob in shares.items()}
    except ValueError as exc:
        raise _bad(f"{message.header.kind.value} holds a share that is not one sealed share "
                   f"({exc}).") from None


# -- masked upload ------------------------------------------------------------------------
def masked_tensors(masked: np.ndarray) -> dict[str, torch.Tensor]:
    """A masked upload's tensors (the uint64 words reinterpreted as int64): an Update's
    weights, encoded like any UPDATE's."""
    return {MASKED_TENSOR: torch.from_numpy(masked.view(np.int64).copy())}


def check_masked(tensors: Mapping[str, torch.Tensor], length: int) -> None:
    """ProtocolError 'manifest' unless a MASKED_UPDATE holds exactly its one tensor."""
    t = tensors.get(MASKED_TENSOR)
    if set(tensors) != {MASKED_TENSOR} or t is None or t.dtype != torch.int64 \
            or tuple(t.shape) != (length,):
        raise ProtocolError(Reason.MANIFEST, f"MASKED_UPDATE must hold one int64 tensor "
                                             f"{MASKED_TENSOR!r} of shape ({length},).")


def masked_vector(tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The uint64 words of a masked upload's tensors."""
    return tensors[MASKED_TENSOR].numpy().view(np.uint64)


# -- unmasking ----------------------------------------------------------------------------
def encode_survivors(survivors: Sequence[str]) -> bytes:
    return pack_json({"survivors": _chunks(sorted(survivors))})


def decode_survivors(message: Message) -> list[str]:
    body = unpack_json(message.payload, max_bytes=LIST_MAX_BYTES)
    survivors = _joined(body.get("survivors"), "SECAGG_SURVIVORS survivors")
    if not all(isinstance(p, str) for p in survivors):
        raise _bad("SECAGG_SURVIVORS needs a list of ids 'survivors'.")
    return survivors


def encode_signature(signature: bytes) -> bytes:
    return pack_json({"signature": signature.hex()})


def decode_signature(message: Message) -> bytes:
    try:
        return unhex(unpack_json(message.payload).get("signature"), 64)
    except ValueError as exc:
        raise _bad(f"SECAGG_SIGNATURE has no Ed25519 signature ({exc}).") from None


def encode_unmask(certificate: Certificate) -> bytes:
    body = certificate.to_json()
    pairs = sorted(body["signatures"].items())
    return pack_json({"survivors": _chunks(body["survivors"]),
                      "signatures": [dict(chunk) for chunk in _chunks(pairs)]})


def decode_unmask(message: Message) -> Certificate:
    body = unpack_json(message.payload, max_bytes=LIST_MAX_BYTES)
    chunks = body.get("signatures")
    if not (isinstance(chunks, list) and all(isinstance(c, dict) for c in chunks)):
        raise _bad("SECAGG_UNMASK signatures are not a list of chunks (objects).")
    signatures = {pid: sig for chunk in chunks for pid, sig in chunk.items()}
    if len(signatures) != sum(len(c) for c in chunks) or set(body) != {"survivors",
                                                                        "signatures"}:
        raise _bad("SECAGG_UNMASK repeats a signer or has fields other than survivors and "
                   "signatures.")
    return Certificate.from_json({"survivors": _joined(body["survivors"], "SECAGG_UNMASK "
                                                       "survivors"), "signatures": signatures})


def encode_reveal(revealed: Sequence[Revealed]) -> bytes:
    return pack_json({"shares": [{"owner": r.owner, "kind": r.kind, "index": r.index,
                                  "parts": [p.hex() for p in r.parts]} for r in revealed]})


def decode_reveal(message: Message) -> list[Revealed]:
    shares = unpack_json(message.payload).get("shares")
    if not isinstance(shares, list):
        raise _bad("SECAGG_REVEAL has no list of shares.")
    return [_revealed(s) for s in shares]


def _revealed(item: Any) -> Revealed:
    try:
        kind, index = item["kind"], item["index"]
        parts = [unhex(p, 16) for p in item["parts"]]
        if kind not in ("self", "mask") or type(index) is not int or not 0 < index < 2**16 \
                or len(parts) != (1 if kind == "self" else 2):
            raise ValueError("wrong kind, index or number of parts")
        return Revealed(str(item["owner"]), kind, index, tuple(parts))
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(f"SECAGG_REVEAL holds a share that is refused ({exc}).") from None


__all__ = [
    "LIST_MAX_BYTES",
    "MASKED_TENSOR",
    "attempt_of",
    "check_masked",
    "decode_advert",
    "decode_key_list",
    "decode_params",
    "decode_reveal",
    "decode_sealed",
    "decode_signature",
    "decode_survivors",
    "decode_unmask",
    "encode_advert",
    "encode_key_list",
    "encode_params",
    "encode_reveal",
    "encode_sealed",
    "encode_signature",
    "encode_survivors",
    "encode_unmask",
    "masked_tensors",
    "masked_vector",
]
