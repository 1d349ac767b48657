"""Control messages as types: REJECT, DECLINE, ACK and HEARTBEAT, each with one encoder
(:meth:`meta`) and one strict decoder (``from_meta``).

A decoder refuses, with ProtocolError ``malformed`` naming the key, any meta key its kind does
not define, a missing one, and a value of the wrong type: a strict protocol refuses fields it
does not define instead of ignoring them. :func:`check_meta_keys` is the same check for the
kinds whose meta a payload codec reads (TASK, UPDATE and the masked and encrypted uploads).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from latentfl.errors import ProtocolError, Reason
from latentfl.platform.protocol._header import Kind
from latentfl.privacy.rules import PolicyRule

MAX_DETAIL = 900  # characters of a refusal's sentence that go on the wire

DeclineReason = Reason | PolicyRule
"""Why a participant declines: a protocol :class:`Reason` or the privacy rule that refused."""


def check_meta_keys(kind: Kind, meta: Mapping[str, Any], *, required: Collection[str],
                    optional: Collection[str] = ()) -> None:
    """ProtocolError 'malformed' naming the first meta key ``kind`` does not define, or the
    first it needs and lacks."""
    defined = set(required) | set(optional)
    unknown = sorted(set(meta) - defined)
    if unknown:
        raise ProtocolError(Reason.MALFORMED, f"{kind.value} meta key {unknown[0]!r} is not "
                                              f"defined by the protocol; expected only "
                                              f"{sorted(defined)}.")
    missing = sorted(set(required) - set(meta))
    if missing:
        raise ProtocolError(Reason.MALFORMED, f"{kind.value} meta lacks {missing[0]!r}; "
                                              f"expected {sorted(required)}.")


def _text(kind: Kind, meta: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = meta.get(key)
    if (value is None and optional) or isinstance(value, str):
        return value
    raise ProtocolError(Reason.MALFORMED, f"{kind.value} meta {key} is {str(value)[:60]!r}; "
                                          "expected a string.")


def _parse_reason(kind: Kind, text: Any, vocabulary: tuple[type, ...]) -> Any:
    for enum in vocabulary:
        try:
            return enum(text)
        except ValueError:
            continue
    raise ProtocolError(Reason.MALFORMED, f"{kind.value} reason {str(text)[:64]!r} is not one "
                                          "this protocol defines.")


@dataclass(frozen=True)
class Reject:
    """The coordinator refuses a message: why, in a sentence, and which message it was (kind
    and round, when its header could be read)."""

    reason: Reason
    detail: str
    refused_kind: Kind | None = None
    refused_round: int | None = None

    KIND = Kind.REJECT

    def meta(self) -> dict[str, Any]:
        return {"reason": self.reason.value, "detail": self.detail[:MAX_DETAIL],
                "refused_kind": None if self.refused_kind is None else self.refused_kind.value,
                "refused_round": self.refused_round}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Reject:
        check_meta_keys(cls.KIND, meta, required=("reason", "detail", "refused_kind",
                                                  "refused_round"))
        kind, round = meta["refused_kind"], meta["refused_round"]
        if kind is not None and kind not in Kind.__members__:
            raise ProtocolError(Reason.MALFORMED, f"REJECT refused_kind {str(kind)[:40]!r} is "
                                                  "not a message kind.")
        if round is not None and (type(round) is not int or round < 0):
            raise ProtocolError(Reason.MALFORMED, f"REJECT refused_round is {round!r}; "
                                                  "expected an integer >= 0.")
        return cls(_parse_reason(cls.KIND, meta["reason"], (Reason,)),
                   _text(cls.KIND, meta, "detail"), None if kind is None else Kind(kind), round)

    def refuses(self, kind: Kind, round: int) -> bool:
        """This REJECT answers a ``kind`` message of round ``round``."""
        return self.refused_kind is kind and self.refused_round == round


@dataclass(frozen=True)
class Decline:
    """A participant will not deliver a round (or a secagg step of it): why, in a sentence."""

    reason: DeclineReason
    detail: str

    KIND = Kind.DECLINE

    def meta(self) -> dict[str, Any]:
        return {"reason": self.reason.value, "detail": self.detail[:MAX_DETAIL]}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Decline:
        check_meta_keys(cls.KIND, meta, required=("reason", "detail"))
        return cls(_parse_reason(cls.KIND, meta["reason"], (Reason, PolicyRule)),
                   _text(cls.KIND, meta, "detail"))


@dataclass(frozen=True)
class Ack:
    """The coordinator stored what a participant sent: an upload (its payload's ``sha256``)
    or an audit answer (the operator's ``request`` it answers, and its ``sha256`` when it was
    a report)."""

    sha256: str | None = None
    request: str | None = None

    KIND = Kind.ACK

    def meta(self) -> dict[str, Any]:
        return {k: v for k, v in (("sha256", self.sha256), ("request", self.request))
                if v is not None}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Ack:
        check_meta_keys(cls.KIND, meta, required=(), optional=("sha256", "request"))
        if not meta:
            raise ProtocolError(Reason.MALFORMED, "ACK meta names neither sha256 nor request.")
        return cls(_text(cls.KIND, meta, "sha256", optional=True),
                   _text(cls.KIND, meta, "request", optional=True))

    def acknowledges(self, digest: str) -> bool:
        """This ACK names the upload whose payload has SHA-256 ``digest``."""
        return self.request is None and self.sha256 == digest


@dataclass(frozen=True)
class Heartbeat:
    """Still here. The coordinator's carries its ``boot`` id (a new one: it restarted, so
    say HELLO again) and the session's ``phase``; a participant's carries nothing."""

    boot: str | None = None
    phase: str | None = None

    KIND = Kind.HEARTBEAT

    def meta(self) -> dict[str, Any]:
        return {} if self.boot is None else {"boot": self.boot, "phase": self.phase}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Heartbeat:
        if not meta:
            return cls()
        check_meta_keys(cls.KIND, meta, required=("boot", "phase"))
        return cls(_text(cls.KIND, meta, "boot"), _text(cls.KIND, meta, "phase"))


__all__ = ["MAX_DETAIL", "Ack", "Decline", "DeclineReason", "Heartbeat", "Reject",
           "check_meta_keys"]
