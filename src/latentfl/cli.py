"""The ``latentfl`` command: one entry point, one subcommand per module.

Each module named in ``COMMAND_MODULES`` has ``register(subparsers)``, which adds its parser(s)
and sets ``handler=`` to a function ``(args) -> int``. The optional parts (TenSEAL, Opacus,
matplotlib) are imported only where they are used, so ``latentfl --help`` works without them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from latentfl import __version__
from latentfl.errors import (
    AddressInUseError,
    LatentFLError,
    NotEnrolledError,
    RefusedError,
    SecurityError,
    StateError,
    StateFolderError,
)
from latentfl.exitcodes import ExitCode
from latentfl.log import configure_logging

COMMAND_MODULES: tuple[str, ...] = (
    "latentfl.platform.commands",
    "latentfl.demo",
    "latentfl.distill.commands",
    "latentfl.platform.keys_commands",
    "latentfl.data.commands",
    "latentfl.simulate",
    "latentfl.experiment.commands",
    "latentfl.platform.privacy_commands",
    "latentfl.audits.commands",
    "latentfl.platform.report_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentfl",
        description="Privacy-first federated learning with latent-space dataset distillation.",
    )
    parser.add_argument("--version", action="version", version=f"latentfl {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


# most specific first: the first class the error is an instance of gives the exit status
_EXIT_CODES: tuple[tuple[type[LatentFLError], ExitCode], ...] = (
    (AddressInUseError, ExitCode.ADDRESS_IN_USE),
    (StateFolderError, ExitCode.STATE_FOLDER),
    (NotEnrolledError, ExitCode.NOT_ENROLLED),
    (RefusedError, ExitCode.REFUSED),
    (SecurityError, ExitCode.SECURITY),
    (StateError, ExitCode.STATE),
)


def exit_code_of(error: LatentFLError) -> ExitCode:
    """The documented exit status of a LatentFLError (USER_ERROR for the plain ones)."""
    return next((code for kind, code in _EXIT_CODES if isinstance(error, kind)),
                ExitCode.USER_ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return int(ExitCode.USER_ERROR)
    configure_logging("console", level=args.log_level)
    try:
        return int(handler(args) or 0)
    except LatentFLError as exc:
        print(f"latentfl: error: {exc}", file=sys.stderr)
        return int(exit_code_of(exc))
    except KeyboardInterrupt:
        print("latentfl: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


__all__ = ["COMMAND_MODULES", "build_parser", "exit_code_of", "main"]
