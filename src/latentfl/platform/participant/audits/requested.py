"""An operator's audit request at the site: the site's policy decides, the agent runs it beside
its loop, the full report stays here and only the aggregate numbers leave.

``AUDIT_REQUEST`` (signed by the coordinator) names an audit and bounded options
(``platform/wire/audit_request.py``), checked again here. The agent answers ``AUDIT_DECLINE`` with a
reason, and runs nothing, when

- the request is malformed (``malformed``);
- its site policy does not run it (``audit_not_allowed``: ``[audit] dp_on_request = false``, the
  default);
- it asks for more than the site's limits (``audit_too_large``: ``[audit] max_canaries``,
  ``max_epochs``);
- the run fails (``audit_failed``).

Otherwise the audit waits until no local training runs (so it starts between rounds), then runs
in its own thread: the loop keeps heartbeating, and a TASK that arrives meanwhile starts training
at once (the two share the device until the audit ends). The audit is ``latentfl participant
audit-dp``'s: a throw-away model trained on the site's data plus canaries with the site's own
``[privacy.dp_sgd]`` settings and a throw-away ledger (the site's ledger is not charged). It
writes ``dp_audit.html``/``.json`` into ``STATE_DIR/audits/request-ID/`` and sends only the
aggregates (``audits.shareable_aggregates``) as ``AUDIT_REPORT`` naming the request.

Delivery is at least once: the coordinator sends an unanswered request again on each HELLO, so
an answer lost with a connection is repaired by the reconnection. A request already answered
here (its report on disk) is answered again from that report, never run twice; one running or
waiting is not queued again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from latentfl.audits.dp_command import DPAuditOptions, audit_dp_sgd, write_dp_report
from latentfl.audits.shareable import shareable_aggregates
from latentfl.errors import ProtocolError
from latentfl.platform.participant.config import ParticipantConfig
from latentfl.platform.participant.local_step import LocalData
from latentfl.platform.participant.worker import run_in_daemon_thread
from latentfl.platform.protocol import Kind, Message, pack_json
from latentfl.platform.wire.audit_request import REQUEST_ID, AuditRequest, parse_request

Reply = tuple[Kind, bytes, dict[str, Any]]
REPORT_NAME = "dp_audit.json"


class RequestedAudits:
    """The audits operators asked this site for (owns no socket: returns what to send)."""

    def __init__(self, config: ParticipantConfig, data: LocalData, log: Any,
                 wake: Callable[[], None] | None = None) -> None:
        self.config = config
        self.data = data
        self.log = log
        self.wake = wake  # called from the audit's thread when it is done
        self.waiting: list[AuditRequest] = []
        self.running: tuple[AuditRequest, Future] | None = None

    def folder(self, request_id: str) -> Path:
        """Where the full report of request ``request_id`` is written."""
        assert self.config.state_dir is not None  # dp_on_request requires it (config problems)
        return self.config.state_dir / "audits" / f"request-{request_id}"

    def receive(self, message: Message) -> list[Reply]:
        """Decline, queue, or answer again from disk one AUDIT_REQUEST."""
        try:
            request = parse_request(message.payload)
        except ProtocolError as exc:
            request_id = message.header.meta.get("request")
            self.log.warning("audit_request_refused", request=str(request_id)[:40],
                             detail=str(exc))
            if isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id):
                return [decline(request_id, "malformed", str(exc))]
            return []
        refusal = self.refusal(request)
        if refusal is not None:
            self.log.warning("audit_request_declined", request=request.id, reason=refusal[0])
            return [decline(request.id, *refusal)]
        busy = [r.id for r in self.waiting] + ([self.running[0].id] if self.running else [])
        if request.id in busy:
            return []
        done = self.folder(request.id) / REPORT_NAME
        if done.exists():  # answered before (the answer may have been lost): send it again
            return [answer(request, json.loads(done.read_text()))]
        self.waiting.append(request)
        self.log.info("audit_request_accepted", request=request.id, audit=request.audit,
                      options=request.options)
        return []

    def refusal(self, request: AuditRequest) -> tuple[str, str] | None:
        """(reason, sentence) when this site's ``[audit]`` policy does not run ``request``."""
        policy = self.config.audit
        if not policy.dp_on_request:
            return ("audit_not_allowed", "this site does not run DP audits on request ([audit] "
                                         "dp_on_request = false in its participant config)")
        options = DPAuditOptions(**request.options)
        if options.canaries > policy.max_canaries or options.epochs > policy.max_epochs:
            return ("audit_too_large", f"the request asks for {options.canaries} canaries and "
                                       f"{options.epochs} epochs; this site runs at most "
                                       f"{policy.max_canaries} canaries and {policy.max_epochs} "
                                       "epochs ([audit] max_canaries, max_epochs)")
        return None

    def step(self, *, training: bool) -> list[Reply]:
        """Answer a finished audit; start a waiting one when no local training runs."""
        if self.running is not None and self.running[1].done():
            request, future = self.running
            self.running = None
            try:
                report = future.result()
            except Exception as exc:  # noqa: BLE001 - a failed audit must not stop the agent
                self.log.error("audit_failed", request=request.id,
                               error=f"{type(exc).__name__}: {exc}")
                return [decline(request.id, "audit_failed", f"{type(exc).__name__}: {exc}")]
            self.log.info("audit_finished", request=request.id,
                          verdict=report["verdicts"][0]["status"])
            return [answer(request, report)]
        if self.running is None and self.waiting and not training:
            request = self.waiting.pop(0)
            self.running = (request, run_in_daemon_thread(lambda: self._run(request),
                                                          name=f"audit-{request.id}",
                                                          on_done=self.wake))
            self.log.info("audit_started", request=request.id, audit=request.audit)
        return []

    def _run(self, request: AuditRequest) -> dict[str, Any]:
        """The requested DP audit on this site's data and DP settings; its report's JSON."""
        options = DPAuditOptions(**request.options)
        privacy = self.config.privacy
        audit = audit_dp_sgd(self.data.x, self.data.y, num_classes=self.data.num_classes,
                             options=options, dp=privacy.dp_sgd, delta=privacy.policy.delta,
                             device=self.config.device)
        _, json_path = write_dp_report(audit, self.folder(request.id), data=self.config.data,
                                       options=options, dp=privacy.dp_sgd)
        return json.loads(json_path.read_text())


def answer(request: AuditRequest, report: dict[str, Any]) -> Reply:
    """The AUDIT_REPORT that answers ``request``: the report's shareable aggregates only."""
    return Kind.AUDIT_REPORT, pack_json(shareable_aggregates(report)), {"request": request.id}


def decline(request_id: str, reason: str, detail: str) -> Reply:
    """The AUDIT_DECLINE of request ``request_id``."""
    return Kind.AUDIT_DECLINE, b"", {"request": request_id, "reason": reason,
                                     "detail": detail[:900]}


__all__ = ["RequestedAudits", "answer", "decline"]
