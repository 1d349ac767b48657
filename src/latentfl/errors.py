"""The one exception hierarchy of latentfl.

Every error a user can cause (a bad config, a bad file, a bad peer, a spent budget) is a
``LatentFLError`` whose message is one sentence naming what was wrong, the value seen and
what was expected. The CLI prints it and exits with status 2, without a traceback::

    LatentFLError
     +-- ConfigError        a TOML file or command-line option is malformed or inconsistent
     +-- DataError          a dataset spec, archive, image or array file is missing or corrupt
     +-- ModelError         an unknown architecture, bad options, or weights that do not fit it
     +-- SecurityError      key files, permissions, roster entries, signatures
     |    +-- NotEnrolledError   the coordinator refused this agent's CURVE key (revoked/unknown)
     +-- ProtocolError      a message from a peer is malformed or refused (carries a ``Reason``)
     |    +-- RefusedError       the coordinator refused this agent for good (a final reason)
     +-- StateError         a durable state file (checkpoint, journal, ledger) is corrupt
     |    +-- StateFolderError   the state folder cannot be created, read or written
     +-- AddressInUseError  a daemon's bind address is taken by another process
     +-- PrivacyError       a privacy budget or site policy would be broken
     +-- DistillError       distillation got inputs it cannot work with
"""

from __future__ import annotations

from enum import StrEnum


class LatentFLError(Exception):
    """Base class of every error latentfl reports to a user."""


class ConfigError(LatentFLError):
    """A configuration file or option is invalid."""


class DataError(LatentFLError):
    """A dataset could not be read or does not have the expected layout."""


class ModelError(LatentFLError):
    """A model cannot be built, or weights do not match its manifest."""


class SecurityError(LatentFLError):
    """Keys, permissions, roster or signatures are wrong: fail closed."""


class Reason(StrEnum):
    """Why a message is refused (REJECT) or a task declined (DECLINE); the value goes on the
    wire and into the journal. ``final``: re-sending the same message cannot succeed."""

    final: bool
    meaning: str

    def __new__(cls, value: str, final: bool, meaning: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.final = final
        member.meaning = meaning
        return member

    # the envelope (checked by the protocol's verifier, in DESIGN.md's order)
    FRAMES = "frames", False, "wrong number of frames, or a signature frame of the wrong size"
    TOO_LARGE = "too-large", True, "message, header or payload over its size limit"
    MALFORMED = "malformed", True, "header or payload is not strict, well-formed data"
    SENDER_MISMATCH = "sender-mismatch", False, "header sender is not the authenticated peer"
    UNKNOWN_SENDER = "unknown-sender", False, "sender is not an active member of the roster"
    BAD_SIGNATURE = "bad-signature", False, "Ed25519 signature of the header does not verify"
    VERSION = "version", False, "unsupported protocol version"
    WRONG_SESSION = "wrong-session", False, "message belongs to another session"
    WRONG_ROUND = "wrong-round", True, "message belongs to another round"
    REPLAY = "replay", False, "(sender, nonce) was already used"
    STALE = "stale", False, "timestamp outside the allowed clock-skew window"
    BAD_HASH = "bad-hash", False, "payload length or SHA-256 differs from the signed header"
    UNEXPECTED_KIND = "unexpected-kind", False, "the sender's side may not send this kind"
    # payloads
    NON_FINITE = "non-finite", True, "a tensor holds NaN or infinite values"
    MANIFEST = "manifest", True, "tensor names, shapes or dtypes do not fit the model manifest"
    BAD_CIPHERTEXT = "bad-ciphertext", True, "CKKS ciphertexts do not fit the public context"
    MIN_COHORT = "min-cohort", True, "an encrypted sum covers too few updates to hide one"
    # the round
    LATE = "late", True, "the round the message is for has closed"
    DUPLICATE = "duplicate", True, "the sender already delivered another update this round"
    NOT_IN_ROUND = "not-in-round", True, "the sender was given no task this round"
    WRONG_MODE = "wrong-mode", True, "the update is (not) encrypted, unlike the session's mode"
    NOT_ASKED = "not-asked", True, "the sender was not asked to decrypt this round's sum"
    NO_SYNTHETIC = "no-synthetic", False, "the latest checkpoint holds no set from the sender"
    NOT_REQUESTED = "not-requested", True, "no unanswered audit request of the sender has this id"
    INTERNAL = "internal", True, "the receiver could not process a verified message"
    TIMEOUT = "timeout", False, "no answer arrived in time"
    # remote admin
    BAD_COMMAND = "bad-command", True, "an operator's command does not apply to the session now"
    # a participant declining its task (policy rules are declined under their own names)
    PRIVACY_CHECK_FAILED = "privacy-check-failed", True, "the site's ledger or plan is unreadable"
    CKKS_UNAVAILABLE = "ckks-unavailable", True, "the site cannot open its CKKS secret context"
    TRAINING_FAILED = "training-failed", True, "local training raised an error"
    DECRYPT_FAILED = "decrypt-failed", True, "the encrypted sum could not be decrypted"

    @classmethod
    def parse(cls, text: object) -> Reason | None:
        """The Reason a peer named, or None for a word this version does not know."""
        try:
            return cls(text)
        except ValueError:
            return None


class ProtocolError(LatentFLError):
    """A peer's message is refused; ``reason`` is the code sent back in REJECT.

    A peer's own refusal may carry a word this version does not know: then ``reason`` is that
    word as a string (see :meth:`Reason.parse`).
    """

    def __init__(self, reason: Reason | str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StateError(LatentFLError):
    """A durable state file is missing or corrupt."""


class StateFolderError(StateError):
    """The state folder cannot be created, read or written (permissions, a file in the way)."""


class NotEnrolledError(SecurityError):
    """The coordinator's ZAP handler refused this participant's CURVE key."""


class RefusedError(ProtocolError):
    """The coordinator refused this participant with a reason re-sending cannot fix."""


class AddressInUseError(LatentFLError):
    """A daemon's bind address is already in use."""


class PrivacyError(LatentFLError):
    """A task would exceed a privacy budget or break a site policy."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class DistillError(LatentFLError):
    """Distillation inputs are inconsistent (shapes, labels, devices)."""


__all__ = [
    "AddressInUseError",
    "ConfigError",
    "DataError",
    "DistillError",
    "LatentFLError",
    "ModelError",
    "NotEnrolledError",
    "PrivacyError",
    "ProtocolError",
    "Reason",
    "RefusedError",
    "SecurityError",
    "StateError",
    "StateFolderError",
]
