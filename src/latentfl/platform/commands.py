"""CLI of the daemons: ``latentfl coordinator``, ``latentfl participant``, ``latentfl status``.

Daemons log JSON lines (one event per line) to stderr; ``status`` prints readable text.
"""

from __future__ import annotations

from pathlib import Path

from latentfl.config import load_config
from latentfl.log import configure_logging
from latentfl.platform.coordinator import (
    Coordinator,
    CoordinatorConfig,
    daemon_running,
    read_status,
    render_status,
    verify_journal,
)
from latentfl.platform.participant import Agent, ParticipantConfig


def _daemon_logging(args) -> None:
    configure_logging("json", level=args.log_level)


def _coordinator(args) -> int:
    config = load_config(args.config, CoordinatorConfig)
    _daemon_logging(args)
    return Coordinator(config).run()


def _participant(args) -> int:
    config = load_config(args.config, ParticipantConfig)
    _daemon_logging(args)
    return Agent(config).run()


def _status(args) -> int:
    config = load_config(args.config, CoordinatorConfig)
    status = read_status(config.state_dir)  # reads only: never creates the folder
    print(render_status(status, running=daemon_running(config.state_dir / "coordinator.pid")))
    journal = config.state_dir / "journal.jsonl"
    if journal.exists():
        print(f"\njournal   {journal}: {verify_journal(journal)} entries, hash chain verified")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("coordinator", help="Run the coordinator daemon.")
    p.add_argument("--config", required=True, type=Path, help="Coordinator TOML file.")
    p.set_defaults(handler=_coordinator)
    p = subparsers.add_parser("participant", help="Run a participant agent at an institution.")
    p.add_argument("--config", required=True, type=Path, help="Participant TOML file.")
    p.set_defaults(handler=_participant)
    p = subparsers.add_parser("status", help="Show a coordinator's round, phase and participants.")
    p.add_argument("--config", required=True, type=Path, help="The coordinator's TOML file.")
    p.set_defaults(handler=_status)


__all__ = ["register"]
