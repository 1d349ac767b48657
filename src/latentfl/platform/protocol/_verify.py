"""Accepting or refusing a message: the checks of DESIGN.md, in its order.

``decode`` checks frame count and sizes, that the ZAP User-Id equals the header's sender, the
signature, session and round, the timestamp window, that the nonce is unseen, and the payload
hash; last, that the kind is one the sender's role may send (``FROM_PARTICIPANT`` /
``FROM_COORDINATOR`` / ``FROM_OPERATOR``). The header is parsed before the signature check (to learn the sender)
but strictly and size-bounded, and nothing in it is trusted until the signature verifies. The
timestamp is checked before the nonce is recorded, so a message refused as stale leaves no nonce
in the replay log (its claimed time, possibly far in the future, would otherwise keep it there).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from latentfl.errors import ProtocolError, Reason
from latentfl.platform.crypto.keys import COORDINATOR_ID
from latentfl.platform.crypto.roster import Roster
from latentfl.platform.crypto.signing import SIGNATURE_BYTES, verify
from latentfl.platform.protocol._header import (
    DEFAULT_CLOCK_SKEW_S,
    DEFAULT_MAX_MESSAGE_BYTES,
    FROM_COORDINATOR,
    FROM_OPERATOR,
    FROM_PARTICIPANT,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    Kind,
    Message,
    frame_bytes,
    parse_header,
)
from latentfl.platform.protocol._replay import ReplayGuard


@dataclass(frozen=True)
class Signer:
    """A peer whose signatures count, and the kinds its role may send (None: any kind)."""

    verify_key: Ed25519PublicKey
    may_send: frozenset[Kind] | None = None


SignerLookup = Callable[[str], Signer | None]


def _decode(
    frames: Sequence[Any],
    *,
    user_id: str | None,
    lookup: SignerLookup,
    session: str | None,
    expected_round: int | None,
    replay: ReplayGuard,
    max_bytes: int,
    clock_skew_s: float,
    now: float | None,
) -> Message:
    if replay.window_s < clock_skew_s:
        raise ValueError(
            f"replay guard window {replay.window_s}s is shorter than the clock skew "
            f"{clock_skew_s}s; replays of forgotten nonces would pass"
        )
    if len(frames) != 3:
        raise ProtocolError(Reason.FRAMES, f"message has {len(frames)} frames; expected 3")
    sizes = [len(f) for f in frames]
    if sum(sizes) > max_bytes:
        raise ProtocolError(Reason.TOO_LARGE, f"message is {sum(sizes)} bytes; at most {max_bytes}")
    if sizes[0] > MAX_HEADER_BYTES:
        raise ProtocolError(
            Reason.TOO_LARGE, f"header is {sizes[0]} bytes; at most {MAX_HEADER_BYTES}"
        )
    if sizes[1] != SIGNATURE_BYTES:
        raise ProtocolError(Reason.FRAMES, f"signature frame is {sizes[1]} bytes; expected 64")
    raw, signature, payload = (frame_bytes(f) for f in frames)
    header = parse_header(raw)
    if header.sender != user_id:
        raise ProtocolError(
            Reason.SENDER_MISMATCH,
            f"header sender {header.sender!r} differs from the authenticated peer {user_id!r}",
        )
    signer = lookup(header.sender)
    if signer is None:
        raise ProtocolError(
            Reason.UNKNOWN_SENDER, f"sender {header.sender!r} is not enrolled, or is revoked"
        )
    if not verify(signer.verify_key, signature, raw):
        raise ProtocolError(
            Reason.BAD_SIGNATURE, f"signature from {header.sender!r} does not verify"
        )
    if header.version != PROTOCOL_VERSION:
        raise ProtocolError(
            Reason.VERSION, f"protocol version is {header.version}; expected {PROTOCOL_VERSION}"
        )
    if session is not None and header.session != session:
        raise ProtocolError(
            Reason.WRONG_SESSION, f"session is {header.session!r}; expected {session!r}"
        )
    if expected_round is not None and header.round != expected_round:
        raise ProtocolError(
            Reason.WRONG_ROUND, f"round is {header.round}; expected {expected_round}"
        )
    now = time.time() if now is None else now
    if abs(now - header.timestamp) > clock_skew_s:
        raise ProtocolError(
            Reason.STALE,
            f"timestamp is {header.timestamp - now:+.1f}s from this host's clock; expected "
            f"within {clock_skew_s:g}s (check both hosts' clocks)",
        )
    if replay.seen_or_add(header.sender, header.nonce, header.timestamp):
        raise ProtocolError(
            Reason.REPLAY, f"nonce {header.nonce} from {header.sender!r} was already used"
        )
    digest = hashlib.sha256(payload).hexdigest()
    if len(payload) != header.payload_len or digest != header.payload_sha256:
        raise ProtocolError(
            Reason.BAD_HASH,
            f"payload of {len(payload)} bytes does not match the signed length "
            f"{header.payload_len} and SHA-256",
        )
    if signer.may_send is not None and header.kind not in signer.may_send:
        raise ProtocolError(
            Reason.UNEXPECTED_KIND, f"{header.sender!r} may not send {header.kind.value}"
        )
    return Message(header, payload, raw, signature)


def decode(
    frames: Sequence[Any],
    *,
    user_id: str | None,
    verify_key: Ed25519PublicKey,
    session: str | None,
    expected_round: int | None,
    replay: ReplayGuard,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    clock_skew_s: float = DEFAULT_CLOCK_SKEW_S,
    now: float | None = None,
    accepts: Collection[Kind] | None = None,
) -> Message:
    """Verify a message from one known peer; ProtocolError(reason, sentence) when refused.

    ``user_id`` is the authenticated peer: the ZAP User-Id on the coordinator, ``"coordinator"``
    on a participant (whose CURVE client pins the server key). ``session=None`` or
    ``expected_round=None`` skip that check; ``accepts`` (the kinds the peer's side may send)
    is checked last. ``now`` overrides the clock (tests).
    """
    signer = Signer(verify_key, None if accepts is None else frozenset(accepts))
    return _decode(
        frames,
        user_id=user_id,
        lookup=lambda _sender: signer,
        session=session,
        expected_round=expected_round,
        replay=replay,
        max_bytes=max_bytes,
        clock_skew_s=clock_skew_s,
        now=now,
    )


class Verifier:
    """``decode`` bound to a set of peers' signing keys, the kinds each may send, a session, a
    replay guard and limits."""

    def __init__(
        self,
        verify_keys: Mapping[str, Ed25519PublicKey],
        *,
        session: str | None,
        replay: ReplayGuard,
        max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        clock_skew_s: float = DEFAULT_CLOCK_SKEW_S,
        accepts: Collection[Kind] | None = None,
    ) -> None:
        self.accepts = None if accepts is None else frozenset(accepts)
        self._signers: dict[str, Signer] = {}
        self.update_keys(verify_keys)
        self.session = session
        self.replay = replay
        self.max_bytes = max_bytes
        self.clock_skew_s = clock_skew_s

    @classmethod
    def of_roster(cls, roster: Roster, **options: Any) -> Verifier:
        """For the coordinator: each active party of the roster, limited to its role's kinds
        (participants ``FROM_PARTICIPANT``, operators ``FROM_OPERATOR``)."""
        verifier = cls({}, **options)
        verifier.update_roster(roster)
        return verifier

    @classmethod
    def of_coordinator(cls, roster: Roster, *, accepts: Collection[Kind] = FROM_COORDINATOR,
                       **options: Any) -> Verifier:
        """For a participant (for an operator, ``accepts=TO_OPERATOR``): accepts what the
        roster's coordinator may send it."""
        return cls({COORDINATOR_ID: roster.coordinator_sign_public}, accepts=accepts, **options)

    def update_keys(self, verify_keys: Mapping[str, Ed25519PublicKey]) -> None:
        """Replace the accepted signers, each limited to ``accepts``: revoked ids stop
        verifying."""
        self._signers = {pid: Signer(key, self.accepts) for pid, key in verify_keys.items()}

    def update_roster(self, roster: Roster) -> None:
        """Replace the accepted signers with the roster's active parties, by role (after a
        roster reload): revoked ids stop verifying."""
        signers = {pid: Signer(key, FROM_PARTICIPANT) for pid, key in roster.verify_keys().items()}
        signers.update({oid: Signer(key, FROM_OPERATOR)
                        for oid, key in roster.operator_keys().items()})
        self._signers = signers

    def verify(
        self,
        frames: Sequence[Any],
        *,
        user_id: str | None,
        expected_round: int | None = None,
        now: float | None = None,
    ) -> Message:
        """Check ``frames`` from ``user_id``; ProtocolError(reason, sentence) when refused."""
        return _decode(
            frames,
            user_id=user_id,
            lookup=self._signers.get,
            session=self.session,
            expected_round=expected_round,
            replay=self.replay,
            max_bytes=self.max_bytes,
            clock_skew_s=self.clock_skew_s,
            now=now,
        )


__all__ = ["Signer", "Verifier", "decode"]
