"""CLI of the daemons: ``latentfl coordinator``, ``latentfl participant``, ``latentfl status``.

Daemons log JSON lines (one event per line) to stderr; ``status`` prints readable text.
"""

from __future__ import annotations

import gc
from pathlib import Path

from latentfl.config import load_config
from latentfl.log import configure_logging
from latentfl.platform.coordinator import (
    Coordinator,
    CoordinatorConfig,
    daemon_running,
    read_status,
    render_status,
    verify_against_checkpoint,
)
from latentfl.platform.participant import Agent, ParticipantConfig


def _daemon_logging(args) -> None:
    configure_logging("json", level=args.log_level)


def _coordinator(args) -> int:
    config = load_config(args.config, CoordinatorConfig)
    _daemon_logging(args)
    try:
        return Coordinator(config, accept_journal_loss=args.accept_journal_loss).run()
    finally:
        gc.freeze()  # as for the participant below


def _participant(args) -> int:
    config = load_config(args.config, ParticipantConfig)
    _daemon_logging(args)
    try:
        return Agent(config).run()
    finally:
        # The process exits next: without this the collector walks torch's object graph at
        # teardown, seconds on a loaded host, and a stop must take effect within 5 s.
        gc.freeze()


def _status(args) -> int:
    config = load_config(args.config, CoordinatorConfig)
    status = read_status(config.state_dir)  # reads only: never creates the folder
    print(render_status(status, running=daemon_running(config.state_dir / "coordinator.pid")))
    journal = config.state_dir / "journal.jsonl"
    entries = verify_against_checkpoint(journal, config.state_dir)  # StateError if lost
    print(f"\njournal   {journal}: {entries} entries, hash chain verified")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("coordinator", help="Run the coordinator daemon.")
    p.add_argument("--config", required=True, type=Path, help="Coordinator TOML file.")
    p.add_argument("--accept-journal-loss", action="store_true",
                   help="Start even though the journal lost entries the latest checkpoint "
                        "recorded (the damaged file is kept aside, the loss journaled).")
    p.set_defaults(handler=_coordinator)
    p = subparsers.add_parser("participant", help="Run a participant agent at an institution.")
    p.add_argument("--config", required=True, type=Path, help="Participant TOML file.")
    p.set_defaults(handler=_participant)
    p = subparsers.add_parser("status", help="Show a coordinator's round, phase and participants.")
    p.add_argument("--config", required=True, type=Path, help="The coordinator's TOML file.")
    p.set_defaults(handler=_status)


__all__ = ["register"]
