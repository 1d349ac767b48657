"""Logging set-up, done once for every command: readable lines for people, JSON for machines.

``latentfl --log-format auto`` (the default) renders structlog's console lines when stderr is
a terminal and JSON lines (one event per line) otherwise, so a daemon under systemd or a pipe
logs JSON while the same daemon in a shell talks to a person. ``--log-file FILE`` appends the
JSON lines to FILE as well. Records of the standard ``logging`` module (pyzmq's authenticator,
libraries) go through the same renderer, so every command has one log style.

An event may carry ``summary``, a sentence for people ("listening on ..., waiting for 3 of 3
participants"); console lines lead with it, JSON keeps it as a field beside the stable
``event`` name that machines filter on.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "console", "json"]
LOG_FORMATS: tuple[str, ...] = ("auto", "console", "json")
_current: dict[str, Any] = {}  # the last configure_logging arguments, for set_log_level


def _lead_with_summary(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    summary = event.pop("summary", None)
    if summary:
        event["event"] = f"{event['event']}: {summary}"
    return event


class _JsonCopy:
    """A processor that appends each event, as a JSON line, to a file (``--log-file``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh = self.path.open("a", encoding="utf-8", buffering=1)

    def __call__(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        self._fh.write(json.dumps(event, sort_keys=True, default=str) + "\n")
        return event

    def close(self) -> None:
        self._fh.close()


class _ToStructlog(logging.Handler):
    """Hands records of the standard ``logging`` module to structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger(component=record.name)
        log.log(record.levelno, record.getMessage())


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(mode: LogFormat = "auto", level: str = "info",
                      stream: TextIO | None = None, log_file: Path | None = None) -> None:
    """Route every log event to ``stream`` (stderr by default), and to ``log_file`` as JSON.

    ``mode`` "auto" picks console lines on a terminal and JSON lines otherwise.
    """
    if mode not in LOG_FORMATS:
        raise ValueError(f"log format {mode!r}; expected one of {', '.join(LOG_FORMATS)}")
    stream = stream or sys.stderr
    copy = _current.get("copy")
    if copy is not None and (log_file is None or copy.path != Path(log_file)):
        copy.close()
        copy = None
    if copy is None and log_file is not None:
        copy = _JsonCopy(log_file)
    _current.update(mode=mode, stream=stream, log_file=log_file, copy=copy)
    if mode == "auto":
        mode = "console" if _is_terminal(stream) else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if copy is not None:
        shared.append(copy)
    renderer: list[Any] = (
        [structlog.processors.JSONRenderer(sort_keys=True)] if mode == "json"
        else [_lead_with_summary, structlog.dev.ConsoleRenderer(colors=_is_terminal(stream))])
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=shared + renderer,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _ToStructlog)]
    root.addHandler(_ToStructlog())
    root.setLevel(numeric)


def set_log_level(level: str) -> None:
    """Change only the level (a command that shows its own progress quiets the round lines);
    the format, stream and log file stay as :func:`configure_logging` set them."""
    configure_logging(_current.get("mode", "auto"), level, _current.get("stream"),
                      _current.get("log_file"))


def get_logger(name: str, **bound: object) -> structlog.typing.FilteringBoundLogger:
    """A logger with ``component=name`` and any other context bound once.

    It stays lazy: the configuration in force when it first logs applies, so module-level
    loggers follow a later :func:`configure_logging`.
    """
    return structlog.get_logger(component=name, **bound)


__all__ = ["LOG_FORMATS", "LogFormat", "configure_logging", "get_logger", "set_log_level"]
