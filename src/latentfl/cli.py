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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from latentfl import __version__
from latentfl.errors import (
    AddressInUseError,
    ConfigError,
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
    config_after_subcommands(parser)
    for each in all_parsers(parser):
        each.formatter_class = HelpWithDefaults
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for sub in dict.fromkeys(action.choices.values())]


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def config_after_subcommands(parser: argparse.ArgumentParser) -> None:
    """One ``--config`` position for every command: after the command's own name (``latentfl
    admin status --config FILE``, ``latentfl participant audit-dp --config FILE``). A group
    that takes ``--config`` before its subcommands (``latentfl admin --config FILE status``,
    the agent's ``latentfl participant --config FILE``) keeps that spelling too."""
    for group in all_parsers(parser):
        config, children = _option(group, "--config"), _subcommands(group)
        if config is None or not children:
            continue
        config.required, config.default = False, None
        for child in children:
            own = _option(child, "--config")
            if own is None:
                child.add_argument("--config", type=Path, help=config.help)
                own = _option(child, "--config")
            # SUPPRESS: a subcommand given no --config keeps the one before its name
            own.required, own.default = False, argparse.SUPPRESS
            handler = child.get_default("handler") or group.get_default("handler")
            child.set_defaults(handler=_needing_config(handler, child.prog))


def _needing_config(handler: Callable[[argparse.Namespace], int],
                    prog: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if args.config is None:
            raise ConfigError(f"{prog} needs --config FILE; expected `{prog} --config FILE`.")
        return handler(args)
    return run


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
