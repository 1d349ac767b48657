"""The site's own record (``STATE_DIR/record.jsonl``): what it was asked, decided, sent and
had acknowledged, hash-chained and fsynced like the coordinator's journal (the same
:class:`~latentfl.platform.coordinator.journal.Journal` code: one implementation of the chain).

Entries: ``task`` (round, the coordinator's method where the TASK names it, model manifest
digest, aggregation mode, epochs, learning rate, batch size), ``declined`` (round, the rule or
reason, its detail), ``accepted`` (round: training starts), ``sent`` (kind, round, SHA-256 of
the payload, bytes, the epsilon the ledger reported), ``acknowledged`` (kind, round, SHA-256)
and ``audit_answered`` (kind, request). No weights, data or keys. ``latentfl participant log`` prints it; :func:`compare_with_coordinator` checks it
against an export of the coordinator's journal (``latentfl participant verify``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentfl.platform.coordinator.journal import Journal, read_journal, verify_journal
from latentfl.platform.protocol import UPDATE_KINDS

RECORD_FILE = "record.jsonl"
_UPLOADS = {kind.value for kind in UPDATE_KINDS}


class SiteRecord:
    """The agent's record; without a state folder nothing is kept (memory-only agents)."""

    def __init__(self, state_dir: Path | None) -> None:
        self._journal = None if state_dir is None else Journal(state_dir / RECORD_FILE)

    def note(self, event: str, *, durable: bool = True, **fields: Any) -> None:
        """Append one entry, fsynced (before the message it describes goes out) unless
        ``durable`` is false: then the durable entry that always follows it fsyncs both."""
        if self._journal is not None:
            self._journal.append(event, durable=durable, **fields)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def read_record(state_dir: Path) -> list[dict[str, Any]]:
    """The site's record, its chain checked (StateError names the first broken line)."""
    path = state_dir / RECORD_FILE
    verify_journal(path)
    return read_journal(path)


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_with_coordinator` found; ``problems`` empty when both agree."""

    matched: int
    problems: list[str]


def compare_with_coordinator(site: str, record: Iterable[dict[str, Any]],
                             coordinator: Iterable[dict[str, Any]]) -> Comparison:
    """Every upload the site had acknowledged is in the coordinator's journal with the same
    digest, and every upload the coordinator recorded from ``site`` is one the site sent. An
    export that is a tail of the journal (``admin journal --tail N``) is compared over the time
    it covers."""
    record, coordinator = list(record), list(coordinator)
    if coordinator and coordinator[0].get("seq") != 0:  # a tail: compare over its span only
        since = float(coordinator[0].get("time", 0.0))
        record = [e for e in record if e["time"] >= since or e["event"] == "sent"]
    sent = {(e["kind"], e["round"], e["sha256"]) for e in record if e["event"] == "sent"}
    acked = {(e["kind"], e["round"], e["sha256"]) for e in record
             if e["event"] == "acknowledged"}
    recorded = {(e["kind"], e["round"], e["sha256"]) for e in coordinator
                if e.get("event") == "accepted" and e.get("peer") == site
                and e.get("kind") in _UPLOADS and isinstance(e.get("sha256"), str)}
    problems = [f"round {r}: the coordinator's journal records {kind} from {site} with "
                f"SHA-256 {digest[:16]}... that this site never sent."
                for kind, r, digest in sorted(recorded - sent)]
    problems += [f"round {r}: this site's {kind} with SHA-256 {digest[:16]}... was acknowledged "
                 "but the coordinator's journal does not record it."
                 for kind, r, digest in sorted(acked - recorded)]
    return Comparison(len(acked & recorded), problems)


__all__ = ["RECORD_FILE", "Comparison", "SiteRecord", "compare_with_coordinator",
           "read_record"]
