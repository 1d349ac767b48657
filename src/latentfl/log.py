"""Logging set-up, done in one place: JSON lines for daemons, readable lines for the CLI."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog


def configure_logging(
    mode: Literal["console", "json"] = "console", level: str = "info", stream: TextIO | None = None
) -> None:
    """Route structlog events to ``stream`` (stderr by default) as JSON lines or console text."""
    renderer = (
        structlog.processors.JSONRenderer(sort_keys=True)
        if mode == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **bound: object) -> structlog.typing.FilteringBoundLogger:
    """A logger with ``component=name`` and any other context bound once.

    It stays lazy: the configuration in force when it first logs applies, so module-level
    loggers follow a later :func:`configure_logging`.
    """
    return structlog.get_logger(component=name, **bound)


__all__ = ["configure_logging", "get_logger"]
