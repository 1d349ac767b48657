"""Numbered exit statuses of the ``latentfl`` command and its daemons, each with its meaning."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USER_ERROR = 2
    SECURITY = 3
    STATE = 4
    INTERRUPTED = 130


HELP: dict[ExitCode, str] = {
    ExitCode.OK: "The command finished what it was asked to do.",
    ExitCode.INTERNAL: "An unexpected internal error; the traceback above is a bug worth reporting.",
    ExitCode.USER_ERROR: "A config, option, dataset or file was invalid; the message names it.",
    ExitCode.SECURITY: "Keys, permissions or the roster are unusable, so a daemon refused to start.",
    ExitCode.STATE: "A durable state file (checkpoint, journal, ledger) is corrupt; nothing was changed.",
    ExitCode.INTERRUPTED: "Stopped by Ctrl-C or SIGTERM after saving state.",
}

__all__ = ["HELP", "ExitCode"]
