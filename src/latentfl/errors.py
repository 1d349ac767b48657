"""The one exception hierarchy of latentfl.

Every error a user can cause (a bad config, a bad file, a bad peer, a spent budget) is a
``LatentFLError`` whose message is one sentence naming what was wrong, the value seen and
what was expected. The CLI prints it and exits with status 2, without a traceback::

    LatentFLError
     +-- ConfigError        a TOML file or command-line option is malformed or inconsistent
     +-- DataError          a dataset spec, archive, image or array file is missing or corrupt
     +-- ModelError         an unknown architecture, bad options, or weights that do not fit it
     +-- SecurityError      key files, permissions, roster entries, signatures
     +-- ProtocolError      a message from a peer is malformed or refused (carries ``reason``)
     +-- StateError         a durable state file (checkpoint, journal, ledger) is corrupt
     +-- PrivacyError       a privacy budget or site policy would be broken
     +-- DistillError       distillation got inputs it cannot work with
"""

from __future__ import annotations


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


class ProtocolError(LatentFLError):
    """A peer's message is refused; ``reason`` is the short code sent back in REJECT."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class StateError(LatentFLError):
    """A durable state file is missing or corrupt."""


class PrivacyError(LatentFLError):
    """A task would exceed a privacy budget or break a site policy."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


class DistillError(LatentFLError):
    """Distillation inputs are inconsistent (shapes, labels, devices)."""


__all__ = [
    "ConfigError",
    "DataError",
    "DistillError",
    "LatentFLError",
    "ModelError",
    "PrivacyError",
    "ProtocolError",
    "SecurityError",
    "StateError",
]
