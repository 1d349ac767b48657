"""CLI of the daemons: ``latentfl coordinator``, ``latentfl participant``, ``latentfl status``.

Daemons log through the one set-up in ``latentfl.log`` (readable lines on a terminal, JSON lines
otherwise or with ``--log-format json``); ``status`` prints readable text, JSON or an HTML page.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

from latentfl.config import load_config
from latentfl.durable import write_atomic
from latentfl.errors import LatentFLError
from latentfl.exitcodes import ExitCode
from latentfl.platform.coordinator import (
    Coordinator,
    CoordinatorConfig,
    check_quorum,
    collect_status,
    render_html,
    render_text,
)
from latentfl.platform.crypto import load_roster
from latentfl.platform.participant import Agent, ParticipantConfig


def _coordinator(args) -> int:
    config = load_config(args.config, CoordinatorConfig)
    # before the state folder is touched: a session that can never start is refused at once
    check_quorum(config, len(load_roster(config.roster).active_ids()), config.roster)
    try:
        return Coordinator(config, accept_journal_loss=args.accept_journal_loss).run()
    finally:
        gc.freeze()  # as for the participant below


def _participant(args) -> int:
    config = load_config(args.config, ParticipantConfig)
    agent = Agent(config)
    try:
        code = agent.run()
    except LatentFLError as exc:
        if agent.session.working:
            from latentfl.cli import exit_code_of
            _leave_now(int(exit_code_of(exc)), f"latentfl: error: {exc}")
        raise
    finally:
        # The process exits next: without this the collector walks torch's object graph at
        # teardown, seconds on a loaded host, and a stop must take effect within 5 s.
        gc.freeze()
    if agent.session.working:
        _leave_now(code)
    return code


def _leave_now(code: int, message: str | None = None) -> None:
    """Exit at once, skipping the interpreter's teardown: local training did not stop within
    the agent's join (a batch slower than it on a loaded host), and tearing torch down under
    its thread ends the process in native code instead of with ``code``. Everything durable
    (ledger, replay log, record) is already on disk."""
    if message is not None:
        print(message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _status(args) -> int:
    config = load_config(args.config, CoordinatorConfig)
    status = collect_status(config)  # reads only: never creates the folder
    if args.html is not None:
        write_atomic(args.html, render_html(status).encode("utf-8"))
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        for line in render_text(status):
            print(line)
        if args.html is not None:
            print(f"\npage    {args.html}")
    sys.stdout.flush()
    if status["journal"]["error"]:  # everything else was still shown; the error goes last
        print(f"latentfl: error: {status['journal']['error']}", file=sys.stderr)
        return int(ExitCode.STATE)
    return int(ExitCode.OK)


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
    p = subparsers.add_parser(
        "status", help="Show every enrolled participant, the rounds and their metrics, from a "
        "coordinator's roster, state folder and journal (no network, no keys).")
    p.add_argument("--config", required=True, type=Path, help="The coordinator's TOML file.")
    p.add_argument("--json", action="store_true",
                   help="Print the status as one JSON object instead of text.")
    p.add_argument("--html", type=Path, metavar="FILE",
                   help="Also write a self-contained HTML page (participants, rounds, an "
                        "accuracy-per-round plot) to FILE.")
    p.set_defaults(handler=_status)


__all__ = ["register"]
