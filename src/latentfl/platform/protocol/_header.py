"""The signed envelope: ``[header JSON, Ed25519 signature of the header, payload]``.

The header is canonical JSON binding version, kind, session, round, sender, a fresh nonce, the
timestamp and the payload's length and SHA-256. This module builds messages and parses headers
strictly; ``_verify`` decides whether to accept them.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from latentfl.errors import ProtocolError, Reason
from latentfl.platform.protocol._json import MAX_SAFE_INT, canonical_json, strict_json

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 8192
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
DEFAULT_CLOCK_SKEW_S = 300.0
MAX_META_ENTRIES = 32
MAX_META_STRING = 1024

_HEADER_KEYS = frozenset(
    {"version", "kind", "session", "round", "sender", "nonce", "timestamp", "payload_len",
     "payload_sha256", "meta"}
)
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SESSION = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_META_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Kind(StrEnum):
    """Message kinds; the value is what goes on the wire. Each names one thing a message can
    be, so that no flag in ``meta`` changes what a message means."""

    HELLO = "HELLO"  # participant: here I am (payload: a data summary)
    TASK = "TASK"  # coordinator: train from these weights
    UPDATE = "UPDATE"  # participant: my trained weights
    ENCRYPTED_UPDATE = "ENCRYPTED_UPDATE"  # participant (ckks): my masked words' limbs, encrypted
    DECRYPT_TASK = "DECRYPT_TASK"  # coordinator (ckks): decrypt this encrypted *sum*
    AGGREGATE = "AGGREGATE"  # participant (ckks): that sum's limb sums, rounded to integers
    DECLINE = "DECLINE"  # participant: I will not deliver this round (meta: reason, detail)
    ACK = "ACK"  # coordinator: received and stored (meta: sha256)
    REJECT = "REJECT"  # coordinator: refused (meta: reason, detail, refused_kind/round)
    HEARTBEAT = "HEARTBEAT"  # both: still here
    STATUS = "STATUS"  # coordinator: the session's phase
    BYE = "BYE"  # participant: leaving
    # audits (docs/audits.md): a participant fetches its own synthetic set, shares aggregates
    FETCH_SYNTHETIC = "FETCH_SYNTHETIC"
    SYNTHETIC = "SYNTHETIC"
    AUDIT_REPORT = "AUDIT_REPORT"  # participant: an audit's aggregate numbers (meta: request)
    # an operator's audit request, delivered to the site's agent, which runs it or declines
    AUDIT_REQUEST = "AUDIT_REQUEST"  # coordinator: run this audit here (payload: options JSON)
    AUDIT_DECLINE = "AUDIT_DECLINE"  # participant: I will not run it (meta: request, reason)
    # remote admin (docs/deployment.md, "The admin role"): an operator's signed commands and the
    # coordinator's answer; the roster's operators send these and nothing else
    ADMIN_STATUS = "ADMIN_STATUS"  # operator: the coordinator's status
    ADMIN_PAUSE = "ADMIN_PAUSE"  # operator: open and close no round until resumed
    ADMIN_RESUME = "ADMIN_RESUME"  # operator: carry on after a pause
    ADMIN_ABORT_ROUND = "ADMIN_ABORT_ROUND"  # operator: skip the round named by the header round
    ADMIN_REMOVE = "ADMIN_REMOVE"  # operator: meta participant takes part in no further round
    ADMIN_READMIT = "ADMIN_READMIT"  # operator: undo ADMIN_REMOVE of meta participant
    ADMIN_JOURNAL = "ADMIN_JOURNAL"  # operator: the last meta tail journal entries
    ADMIN_REQUEST_AUDIT = "ADMIN_REQUEST_AUDIT"  # operator: meta participant, run this audit
    ADMIN_RESULT = "ADMIN_RESULT"  # coordinator: a command's outcome (payload: a JSON object)
    # secure aggregation, ``aggregation.mode = "secagg"`` or ``"ckks"``
    # (latentfl.privacy.secagg): one round's five exchanges, each relayed by a coordinator that
    # cannot read what it relays
    SECAGG_KEYS = "SECAGG_KEYS"  # participant: my round keys, signed (payload: advert JSON)
    SECAGG_KEY_LIST = "SECAGG_KEY_LIST"  # coordinator: every advertised key set (payload JSON)
    SECAGG_SHARES = "SECAGG_SHARES"  # participant: my seed shares, sealed to each neighbour
    SECAGG_SHARE_INBOX = "SECAGG_SHARE_INBOX"  # coordinator: the shares sealed to you
    MASKED_UPDATE = "MASKED_UPDATE"  # participant: my masked fixed-point update (acked)
    SECAGG_SURVIVORS = "SECAGG_SURVIVORS"  # coordinator: the survivor set, to be signed
    SECAGG_SIGNATURE = "SECAGG_SIGNATURE"  # participant: my signature of that set
    SECAGG_UNMASK = "SECAGG_UNMASK"  # coordinator: the certified survivor set; reveal shares
    SECAGG_REVEAL = "SECAGG_REVEAL"  # participant: the shares that unmask the survivors' sum


UPDATE_KINDS = frozenset({Kind.UPDATE, Kind.ENCRYPTED_UPDATE, Kind.MASKED_UPDATE})
"""The kinds that carry a participant's trained update, one per aggregation mode (plain, ckks,
secagg); what status and the report count as an update, whatever the mode."""

SECAGG_FROM_PARTICIPANT = frozenset({
    Kind.SECAGG_KEYS, Kind.SECAGG_SHARES, Kind.MASKED_UPDATE, Kind.SECAGG_SIGNATURE,
    Kind.SECAGG_REVEAL,
})
SECAGG_FROM_COORDINATOR = frozenset({
    Kind.SECAGG_KEY_LIST, Kind.SECAGG_SHARE_INBOX, Kind.SECAGG_SURVIVORS, Kind.SECAGG_UNMASK,
})

FROM_PARTICIPANT = frozenset({
    Kind.HELLO, Kind.UPDATE, Kind.ENCRYPTED_UPDATE, Kind.AGGREGATE, Kind.DECLINE,
    Kind.HEARTBEAT, Kind.BYE, Kind.FETCH_SYNTHETIC, Kind.AUDIT_REPORT, Kind.AUDIT_DECLINE,
}) | SECAGG_FROM_PARTICIPANT
"""The kinds a participant may send (the coordinator's verifier refuses the others)."""

FROM_COORDINATOR = frozenset({
    Kind.TASK, Kind.DECRYPT_TASK, Kind.ACK, Kind.REJECT, Kind.HEARTBEAT, Kind.STATUS,
    Kind.SYNTHETIC, Kind.AUDIT_REQUEST,
}) | SECAGG_FROM_COORDINATOR
"""The kinds the coordinator may send (a participant's verifier refuses the others)."""

FROM_OPERATOR = frozenset({
    Kind.ADMIN_STATUS, Kind.ADMIN_PAUSE, Kind.ADMIN_RESUME, Kind.ADMIN_ABORT_ROUND,
    Kind.ADMIN_REMOVE, Kind.ADMIN_READMIT, Kind.ADMIN_JOURNAL, Kind.ADMIN_REQUEST_AUDIT,
})
"""The kinds an operator may send: admin commands only (never a participant's kind)."""

TO_OPERATOR = frozenset({Kind.ADMIN_RESULT, Kind.REJECT})
"""The kinds the coordinator answers an operator with (an admin client refuses the others)."""


@dataclass(frozen=True)
class Header:
    """The signed part of a message. ``meta`` holds kind-specific JSON scalars."""

    version: int
    kind: Kind
    session: str
    round: int
    sender: str
    nonce: str
    timestamp: float
    payload_len: int
    payload_sha256: str
    meta: dict[str, str | int | float | bool | None] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """The canonical bytes that are signed and sent."""
        return canonical_json(
            {
                "version": self.version,
                "kind": self.kind.value,
                "session": self.session,
                "round": self.round,
                "sender": self.sender,
                "nonce": self.nonce,
                "timestamp": self.timestamp,
                "payload_len": self.payload_len,
                "payload_sha256": self.payload_sha256,
                "meta": self.meta,
            }
        )


@dataclass(frozen=True)
class Message:
    """A verified message: its header, payload bytes, and the signed header bytes for journals."""

    header: Header
    payload: bytes
    raw_header: bytes = b""
    signature: bytes = b""


@dataclass(frozen=True)
class Outgoing:
    """A message to sign and send: what state machines return to the daemon that owns the
    socket (the daemon adds the envelope: session, sender, nonce, time, signature)."""

    peer: str
    kind: Kind
    round: int
    payload: bytes = b""
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: the payload's SHA-256 when the sender already has it (an upload's, kept for its ACK),
    #: so :func:`encode` does not hash the payload again
    payload_sha256: str | None = None


def _is_int(value: Any, low: int = 0) -> bool:
    return type(value) is int and low <= value <= MAX_SAFE_INT


def _header_problems(obj: Any) -> list[str]:
    """Everything wrong with a decoded header object (empty when it is well formed)."""
    if not isinstance(obj, dict):
        return [f"header is a JSON {type(obj).__name__}; expected an object"]
    if set(obj) != _HEADER_KEYS:
        missing, extra = sorted(_HEADER_KEYS - set(obj)), sorted(set(obj) - _HEADER_KEYS)
        return [f"header keys differ from the protocol's: missing {missing}, unexpected {extra}"]
    problems = []
    if not _is_int(obj["version"], 1):
        problems.append(f"version is {obj['version']!r}; expected an integer in 1..2^53")
    if obj["kind"] not in Kind.__members__:
        problems.append(f"kind is {obj['kind']!r}; expected one of {list(Kind.__members__)}")
    if not (isinstance(obj["session"], str) and _SESSION.fullmatch(obj["session"])):
        problems.append(f"session is {obj['session']!r}; expected 1-128 of A-Z a-z 0-9 _ . : -")
    if not _is_int(obj["round"]):
        problems.append(f"round is {obj['round']!r}; expected an integer in 0..2^53")
    if not (isinstance(obj["sender"], str) and _ID.fullmatch(obj["sender"])):
        problems.append(f"sender is {obj['sender']!r}; expected a participant id")
    if not (isinstance(obj["nonce"], str) and _HEX32.fullmatch(obj["nonce"])):
        problems.append(f"nonce is {obj['nonce']!r}; expected 32 lowercase hex digits")
    ts = obj["timestamp"]
    if not (type(ts) is float and math.isfinite(ts) and ts > 0):
        problems.append(f"timestamp is {ts!r}; expected positive float seconds since the epoch")
    if not _is_int(obj["payload_len"]):
        problems.append(f"payload_len is {obj['payload_len']!r}; expected an integer in 0..2^53")
    if not (isinstance(obj["payload_sha256"], str) and _HEX64.fullmatch(obj["payload_sha256"])):
        problems.append("payload_sha256 is not 64 lowercase hex digits")
    problems += _meta_problems(obj["meta"])
    return problems


def _meta_problems(meta: Any) -> list[str]:
    if not isinstance(meta, dict):
        return [f"meta is a {type(meta).__name__}; expected an object of scalars"]
    if len(meta) > MAX_META_ENTRIES:
        return [f"meta has {len(meta)} entries; expected at most {MAX_META_ENTRIES}"]
    problems = []
    for key, value in meta.items():
        if not (isinstance(key, str) and _META_KEY.fullmatch(key)):
            problems.append(f"meta key {str(key)[:70]!r} is not lowercase snake_case")
        elif isinstance(value, str):
            if len(value) > MAX_META_STRING:
                problems.append(f"meta {key} is {len(value)} characters; at most {MAX_META_STRING}")
        elif isinstance(value, float):
            if not math.isfinite(value):
                problems.append(f"meta {key} is {value!r}; expected a finite number")
        elif isinstance(value, bool) or value is None:
            pass
        elif isinstance(value, int):
            if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
                problems.append(f"meta {key} is outside +-2^53")
        else:
            problems.append(f"meta {key} is a {type(value).__name__}; expected a JSON scalar")
    return problems


def _header_from_obj(obj: dict[str, Any]) -> Header:
    return Header(**{**obj, "kind": Kind(obj["kind"])})


def encode(
    kind: Kind | str,
    *,
    session: str,
    round: int,
    sender: str,
    signing_key: Ed25519PrivateKey,
    payload: bytes = b"",
    meta: Mapping[str, Any] | None = None,
    payload_sha256: str | None = None,
) -> list[bytes]:
    """Build the three frames of a signed message with a fresh nonce and the current time.

    ``payload_sha256`` is the payload's SHA-256 (hex) when the caller computed it already (an
    upload keeps it to match its ACK); it is signed as given, so a wrong one only gets the
    message refused by its receiver, which checks the payload against it."""
    payload = bytes(payload)
    obj = {
        "version": PROTOCOL_VERSION,
        "kind": Kind(kind).value,
        "session": session,
        "round": round,
        "sender": sender,
        "nonce": secrets.token_hex(16),
        "timestamp": float(time.time()),
        "payload_len": len(payload),
        "payload_sha256": payload_sha256 if payload_sha256 is not None
        else hashlib.sha256(payload).hexdigest(),
        "meta": dict(meta or {}),
    }
    problems = _header_problems(obj)
    if problems:
        raise ValueError("cannot encode message: " + "; ".join(problems))
    raw = canonical_json(obj)
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"header is {len(raw)} bytes; at most {MAX_HEADER_BYTES} (shrink meta)")
    return [raw, signing_key.sign(raw), payload]


def frame_bytes(frame: Any) -> bytes:
    data = getattr(frame, "bytes", None)  # zmq.Frame from recv_multipart(copy=False)
    return data if isinstance(data, bytes) else bytes(frame)


def parse_header(raw: bytes) -> Header:
    """Parse header bytes strictly (ProtocolError 'malformed'); checks no signature."""
    obj = strict_json(raw, what="message header", max_bytes=MAX_HEADER_BYTES)
    problems = _header_problems(obj)
    if problems:
        raise ProtocolError(Reason.MALFORMED, "message header is malformed: " + "; ".join(problems))
    if canonical_json(obj) != raw:
        raise ProtocolError(
            Reason.MALFORMED, "message header is not canonical JSON (sorted keys, no spaces)"
        )
    return _header_from_obj(obj)


def peek_header(frames: Sequence[Any]) -> Header | None:
    """The header of a message that may be refused, for journal lines; None if unparsable.

    Unverified: use it to describe a refusal, never to act on.
    """
    if not frames or len(frames[0]) > MAX_HEADER_BYTES:
        return None
    try:
        return parse_header(frame_bytes(frames[0]))
    except ProtocolError:
        return None



__all__ = [
    "DEFAULT_CLOCK_SKEW_S",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FROM_COORDINATOR",
    "FROM_OPERATOR",
    "FROM_PARTICIPANT",
    "MAX_HEADER_BYTES",
    "PROTOCOL_VERSION",
    "TO_OPERATOR",
    "Header",
    "Kind",
    "Message",
    "Outgoing",
    "encode",
    "frame_bytes",
    "parse_header",
    "peek_header",
]
