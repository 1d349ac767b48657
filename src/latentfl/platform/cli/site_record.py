"""``latentfl participant log`` and ``latentfl participant verify``: the site's own record.

- ``latentfl participant log --config participant.toml``: every TASK received, the decision and
  why, what was sent (kind, round, SHA-256, epsilon) and acknowledged, audits answered; the
  record's hash chain is checked first.
- ``latentfl participant verify --config participant.toml --journal-export FILE``: check the
  site's record against an export of the coordinator's journal (JSON lines, e.g. from
  ``latentfl admin journal``): every acknowledged upload is recorded there with the same digest,
  and nothing recorded there from this site was not sent. Exit 0 when they agree, 4 when not.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from latentfl.config import load_config
from latentfl.errors import ConfigError, StateError
from latentfl.exitcodes import ExitCode
from latentfl.platform.coordinator.journal import read_journal
from latentfl.platform.participant import ParticipantConfig
from latentfl.platform.participant.connection import load_enrolment
from latentfl.platform.participant.record import compare_with_coordinator, read_record


def _state_dir(config: ParticipantConfig) -> Path:
    if config.state_dir is None:
        raise ConfigError("this participant's config sets no state_dir, so the agent keeps no "
                          "record; set state_dir (the record is STATE_DIR/record.jsonl).")
    return config.state_dir


def _line(entry: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(entry["time"], UTC).strftime("%Y-%m-%d %H:%M:%S")
    event = entry["event"]
    fields = {k: v for k, v in entry.items()
              if k not in ("seq", "prev", "hash", "time", "event") and v is not None}
    if "sha256" in fields:
        fields["sha256"] = fields["sha256"][:16]
    text = " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
    return f"{entry['seq']:>5}  {when}  {event:<15} {text}"


def _log(args: argparse.Namespace) -> int:
    config = load_config(args.config, ParticipantConfig)
    entries = read_record(_state_dir(config))
    for entry in entries:
        print(_line(entry))
    sent = sum(e["event"] == "sent" for e in entries)
    acked = sum(e["event"] == "acknowledged" for e in entries)
    declined = sum(e["event"] == "declined" for e in entries)
    print(f"record {config.state_dir}/record.jsonl: {len(entries)} entries, chain intact; "
          f"{sent} uploads sent, {acked} acknowledged, {declined} tasks declined")
    return int(ExitCode.OK)


def _verify(args: argparse.Namespace) -> int:
    config = load_config(args.config, ParticipantConfig)
    record = read_record(_state_dir(config))
    try:
        export = read_journal(args.journal_export)
    except (OSError, ValueError) as exc:
        raise StateError(f"--journal-export {args.journal_export} cannot be read as JSON lines "
                         f"({exc}); expected the coordinator's journal or `latentfl admin "
                         "journal` output.") from None
    site = load_enrolment(config).pid
    result = compare_with_coordinator(site, record, export)
    for problem in result.problems:
        print(f"MISMATCH  {problem}")
    if result.problems:
        print(f"{site}: the record and the coordinator's journal disagree "
              f"({len(result.problems)} problem(s)).")
        return int(ExitCode.STATE)
    print(f"{site}: the record and the coordinator's journal agree: {result.matched} "
          "acknowledged upload(s) recorded there with the same SHA-256, none recorded that "
          "this site did not send.")
    return int(ExitCode.OK)


def register(subparsers: Any) -> None:
    agent = subparsers.choices["participant"]
    sub = next(a for a in agent._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.add_parser("log", help="Show this site's own hash-chained record (tasks, "
                       "decisions, uploads and their digests, ACKs, audits).")
    p.add_argument("--config", required=True, type=Path, help="Participant TOML file.")
    p.set_defaults(handler=_log)
    p = sub.add_parser("verify", help="Check this site's record against an export of the "
                       "coordinator's journal.")
    p.add_argument("--config", required=True, type=Path, help="Participant TOML file.")
    p.add_argument("--journal-export", required=True, type=Path, metavar="FILE",
                   help="The coordinator's journal (JSON lines), e.g. `latentfl admin journal "
                        "--tail 100000 > FILE`.")
    p.set_defaults(handler=_verify)


__all__ = ["register"]
