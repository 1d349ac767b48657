"""Operators' audit requests: recorded, journaled, delivered to the site at its next contact.

An operator asks a participant for an audit with ``ADMIN_REQUEST_AUDIT`` (``latentfl admin
request-audit dp-sgd --participant ID``). The request is checked (``platform/wire/audit_request.py``:
a known audit, bounded options, nothing else), given an id, written to
``STATE/audit_requests.json`` (atomically) and journaled (``audit_requested``). The coordinator
sends it as ``AUDIT_REQUEST`` to the participant's agent the next time that agent is heard from
(journal: ``audit_request_delivered``), and again on each HELLO until it is answered, since a
reconnected agent may have restarted. The agent answers with the audit's aggregates
(``AUDIT_REPORT`` naming the request: ``answered``) or with ``AUDIT_DECLINE`` (its site policy,
a bad option, a failed run: ``declined``, journaled as ``audit_declined`` with the reason).

A participant has at most one unanswered request per audit, so an operator cannot queue work
at a site. Owns no socket: the daemon sends what :meth:`AuditRequests.deliveries` returns.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from latentfl.errors import ProtocolError, Reason, StateError
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.coordinator.store import StateStore, read_json, write_json_atomic
from latentfl.platform.protocol import Ack, Kind, Message, Outgoing
from latentfl.platform.wire.audit_request import AUDITS_ON_REQUEST, AuditRequest, encode_request

#: Request states: sent to no agent yet, sent, answered with aggregates, declined by the site.
UNANSWERED = ("waiting", "delivered")
MAX_REASON = 64
MAX_DETAIL = 500


def audit_requests_path(state_dir: Path) -> Path:
    return Path(state_dir) / "audit_requests.json"


def read_audit_requests(state_dir: Path) -> list[dict[str, Any]]:
    """The session's audit requests, oldest first ([] when none was ever made)."""
    path = audit_requests_path(state_dir)
    if not path.exists():
        return []
    data = read_json(path)
    if not (isinstance(data, dict) and isinstance(data.get("requests"), list)
            and all(isinstance(r, dict) and isinstance(r.get("id"), str)
                    and isinstance(r.get("participant"), str) for r in data["requests"])):
        raise StateError(f"audit requests {path} are not {{\"requests\": [...]}}; restore the "
                         "file from a backup or delete it to drop them.")
    return data["requests"]


class AuditRequests:
    """The session's audit requests (see the module docstring)."""

    def __init__(self, store: StateStore, journal: Journal) -> None:
        self.path = audit_requests_path(store.root)
        self.journal = journal
        self.requests = {r["id"]: r for r in read_audit_requests(store.root)}
        # the unanswered ones, oldest first: every message a participant sends looks here
        self.open_ids = [i for i, r in self.requests.items() if r["state"] in UNANSWERED]

    def _save(self) -> None:
        write_json_atomic(self.path, {"requests": list(self.requests.values())})

    # -- the operator's side ----------------------------------------------------------------
    def open(self, *, operator: str, participant: str, audit: str,
             options: dict[str, int | float]) -> dict[str, Any]:
        """Record a checked request; ProtocolError 'bad-command' while one is unanswered."""
        for r in (self.requests[i] for i in self.open_ids):
            if r["participant"] == participant and r["audit"] == audit:
                raise ProtocolError(Reason.BAD_COMMAND, f"{participant} already has an "
                                                        f"unanswered {audit} request "
                                                        f"({r['id']}, {r['state']}); wait for "
                                                        "its answer.")
        record = {"id": secrets.token_hex(8), "participant": participant, "audit": audit,
                  "options": options, "operator": operator, "requested": time.time(),
                  "state": "waiting", "delivered": None, "answered": None, "reason": None,
                  "detail": None, "sha256": None}
        self.requests[record["id"]] = record
        self.open_ids.append(record["id"])
        self._save()
        self.journal.append("audit_requested", peer=operator, participant=participant,
                            request=record["id"], audit=audit, options=options)
        return dict(record)

    # -- the participant's side -------------------------------------------------------------
    def deliveries(self, pid: str, round: int, *, reconnected: bool) -> list[Outgoing]:
        """The AUDIT_REQUESTs to send ``pid`` now: those not yet sent, and on a reconnection
        (HELLO) every unanswered one."""
        out = []
        for r in (self.requests[i] for i in self.open_ids):
            if r["participant"] != pid:
                continue
            if r["state"] == "delivered" and not reconnected:
                continue
            if r["state"] == "waiting":
                r.update(state="delivered", delivered=time.time())
                self._save()
                self.journal.append("audit_request_delivered", peer=pid, request=r["id"],
                                    audit=r["audit"])
            payload = encode_request(AuditRequest(r["id"], r["audit"], r["options"]))
            out.append(Outgoing(pid, Kind.AUDIT_REQUEST, round, payload=payload,
                                meta={"request": r["id"]}))
        return out

    def unanswered(self, pid: str, request_id: Any) -> dict[str, Any]:
        """``pid``'s unanswered request ``request_id``; ProtocolError 'not-requested'."""
        record = self.requests.get(request_id) if isinstance(request_id, str) else None
        if record is None or record["participant"] != pid or record["state"] not in UNANSWERED:
            raise ProtocolError(Reason.NOT_REQUESTED, f"{pid} has no unanswered audit request "
                                                      f"{str(request_id)[:40]!r}")
        return record

    def answering(self, pid: str, request_id: Any, report_kind: str) -> dict[str, Any]:
        """The unanswered request an AUDIT_REPORT of ``report_kind`` answers; ProtocolError
        'not-requested', or 'malformed' when it holds another audit's report."""
        record = self.unanswered(pid, request_id)
        expected = AUDITS_ON_REQUEST[record["audit"]]
        if report_kind != expected:
            raise ProtocolError(Reason.MALFORMED, f"request {record['id']} asked for a "
                                                  f"{record['audit']} audit ({expected}); the "
                                                  f"report is a {report_kind}")
        return record

    def answered(self, record: dict[str, Any], sha256: str) -> None:
        """Mark ``record`` answered by the stored aggregates whose payload has ``sha256``."""
        record.update(state="answered", answered=time.time(), sha256=sha256)
        self.open_ids.remove(record["id"])
        self._save()

    def declined(self, message: Message) -> dict[str, Any]:
        """Record an AUDIT_DECLINE (journaled with its reason); the ACK's meta."""
        pid, meta = message.header.sender, message.header.meta
        record = self.unanswered(pid, meta.get("request"))
        reason = str(meta.get("reason"))[:MAX_REASON]
        detail = str(meta.get("detail"))[:MAX_DETAIL]
        # journaled before the state file says so: a reader of both never sees the state alone
        self.journal.append("audit_declined", peer=pid, request=record["id"],
                            audit=record["audit"], reason=reason, detail=detail)
        record.update(state="declined", answered=time.time(), reason=reason, detail=detail)
        self.open_ids.remove(record["id"])
        self._save()
        return Ack(request=record["id"]).meta()


__all__ = ["UNANSWERED", "AuditRequests", "audit_requests_path", "read_audit_requests"]
