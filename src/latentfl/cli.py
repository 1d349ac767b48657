"""The ``latentfl`` command: one entry point, one subcommand per module.

Each module named in ``COMMAND_MODULES`` has ``register(subparsers)``, which adds its parser(s)
and sets ``handler=`` to a function ``(args) -> int``. The optional parts (TenSEAL, Opacus,
matplotlib) are imported only where they are used, so ``latentfl --help`` works without them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

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
from latentfl.log import LOG_FORMATS, configure_logging

COMMAND_MODULES: tuple[str, ...] = (
    "latentfl.platform.cli.daemons",
    "latentfl.demo",
    "latentfl.distill.commands",
    "latentfl.platform.cli.keys",
    "latentfl.platform.cli.admin",
    "latentfl.data.commands",
    "latentfl.simulate",
    "latentfl.experiment.commands",
    "latentfl.platform.cli.privacy",
    "latentfl.audits.commands",
    "latentfl.platform.cli.report",
    "latentfl.platform.cli.site_record",  # adds to `participant`'s commands after report
)


class HelpWithDefaults(argparse.HelpFormatter):
    """Help that ends each option's text with its default, unless the text names it already
    or there is none to name (no value, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False
                or default == argparse.SUPPRESS or (isinstance(default, list) and not default)
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)"


def all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every subcommand parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from all_parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentfl",
        description="Privacy-first federated learning with latent-space dataset distillation.",
    )
    parser.add_argument("--version", action="version", version=f"latentfl {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning",
                                                                 "error"],
                        help="Least severe log events shown.")
    parser.add_argument("--log-format", default="auto", choices=LOG_FORMATS,
                        help="console: readable lines; json: one JSON object per line; auto: "
                             "console on a terminal, JSON otherwise.")
    parser.add_argument("--log-file", type=Path, metavar="FILE",
                        help="Also append every log event to FILE as a JSON line.")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for each in all_parsers(parser):
        each.formatter_class = HelpWithDefaults
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
    try:
        configure_logging(args.log_format, level=args.log_level, log_file=args.log_file)
    except OSError as exc:
        print(f"latentfl: error: --log-file {args.log_file} cannot be opened ({exc.strerror}); "
              "expected a writable file path.", file=sys.stderr)
        return int(ExitCode.USER_ERROR)
    try:
        return int(handler(args) or 0)
    except BrokenPipeError:
        # the reader went away (`latentfl status | head`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.OK)
    except LatentFLError as exc:
        print(f"latentfl: error: {exc}", file=sys.stderr)
        return int(exit_code_of(exc))
    except KeyboardInterrupt:
        print("latentfl: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)


__all__ = ["COMMAND_MODULES", "HelpWithDefaults", "all_parsers", "build_parser", "exit_code_of",
           "main"]
