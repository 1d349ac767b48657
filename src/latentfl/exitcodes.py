"""Numbered exit statuses of the ``latentfl`` command and its daemons, each with its meaning."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USER_ERROR = 2
    SECURITY = 3
    STATE = 4
    ADDRESS_IN_USE = 5
    STATE_FOLDER = 6
    NOT_ENROLLED = 7
    REFUSED = 8
    INTERRUPTED = 130


HELP: dict[ExitCode, str] = {
    ExitCode.OK: "The command finished what it was asked to do.",
    ExitCode.INTERNAL: "An unexpected internal error; the traceback above is a bug worth reporting.",
    ExitCode.USER_ERROR: "A config, option, dataset or file was invalid; the message names it.",
    ExitCode.SECURITY: "Keys, permissions or the roster are unusable, so a daemon refused to start.",
    ExitCode.STATE: "A durable state file (checkpoint, journal, ledger) is corrupt; nothing was changed.",
    ExitCode.ADDRESS_IN_USE: "The coordinator's bind address is taken by another process; stop it "
    "or choose another bind.",
    ExitCode.STATE_FOLDER: "The state folder cannot be created, read or written, or another "
    "coordinator holds it; check its path, permissions and running daemons.",
    ExitCode.NOT_ENROLLED: "The coordinator refused this participant's CURVE key (revoked or "
    "never enrolled); ask the operator to enrol it.",
    ExitCode.REFUSED: "The coordinator refused this participant for good (wrong session or "
    "another final reason); the message names it.",
    ExitCode.INTERRUPTED: "Stopped by Ctrl-C or SIGTERM after saving state.",
}

__all__ = ["HELP", "ExitCode"]
