"""Remote admin: an operator's signed commands, applied to the session and journaled.

Operators are enrolled in the roster's ``[[operators]]`` table and reach the coordinator over
its CURVE endpoint like participants; the verifier has already checked the envelope and that
the sender is an operator (only operators may send the ``FROM_OPERATOR`` kinds, and they may
send nothing else). Each command is answered with an ``ADMIN_RESULT`` whose payload is a JSON
object, or refused ('bad-command') when it does not apply now:

- ADMIN_STATUS: the coordinator's status (journal: ``accepted``);
- ADMIN_JOURNAL: the last ``meta.tail`` journal entries (journal: ``accepted``);
- ADMIN_PAUSE: open and close no round until resumed, see ``conductor`` (``paused``);
- ADMIN_RESUME: carry on; the open round's deadline moves by the pause (``resumed``);
- ADMIN_ABORT_ROUND: skip the collecting round ``header.round``, see ``rounds``
  (``round_aborted``, naming each accepted update and its SHA-256);
- ADMIN_REMOVE: ``meta.participant`` leaves the round in progress and gets no task in any
  later round; its connection stays (``participant_removed``);
- ADMIN_READMIT: undo ADMIN_REMOVE (``participant_readmitted``);
- ADMIN_REQUEST_AUDIT: ask ``meta.participant`` to run an audit on its own data and share the
  aggregate numbers (payload: the audit and its bounded options, ``platform/wire/audit_request.py``);
  recorded and delivered by ``audits.requests`` (``audit_requested``).

Each journal line names the operator (``peer``); a change's line is fsynced before the answer
leaves (reads are journaled without fsync, like heartbeats). The
standing orders (paused, removed ids) live in ``STATE/admin.json`` (atomic writes), so a
restarted coordinator keeps them. Removing is not revoking: the participant's keys stay valid,
so nobody's connection is dropped (a revocation rebinds the socket, see ``daemon``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from latentfl.errors import ProtocolError, Reason, StateError
from latentfl.log import get_logger
from latentfl.platform.coordinator.audits.requests import AuditRequests
from latentfl.platform.coordinator.conductor import RoundConductor
from latentfl.platform.coordinator.journal import Journal, tail_journal
from latentfl.platform.coordinator.status import stall_reason
from latentfl.platform.coordinator.store import StateStore, read_json, write_json_atomic
from latentfl.platform.crypto import Roster
from latentfl.platform.protocol import Kind, Message
from latentfl.platform.wire.audit_request import parse_command

MAX_TAIL = 1000

Handler = Callable[[Message], dict[str, Any]]


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class AdminService:
    """Applies operators' commands to one session (owns no socket; see the module docstring)."""

    def __init__(self, store: StateStore, journal: Journal, conductor: RoundConductor, *,
                 roster: Callable[[], Roster], status: Callable[[], dict[str, Any]],
                 session: str, audit_requests: AuditRequests) -> None:
        self.path = store.admin_path
        self.journal = journal
        self.conductor = conductor
        self.rounds = conductor.rounds
        self.roster = roster
        self.status = status
        self.audit_requests = audit_requests
        self.log = get_logger("coordinator", session=session)
        paused, self.removed = self._load()
        self.stalled: str | None = None  # why the run cannot proceed, as last logged
        if paused:
            conductor.pause(time.time())
        self.handlers: dict[Kind, Handler] = {
            Kind.ADMIN_STATUS: self._status, Kind.ADMIN_JOURNAL: self._journal,
            Kind.ADMIN_PAUSE: self._pause, Kind.ADMIN_RESUME: self._resume,
            Kind.ADMIN_ABORT_ROUND: self._abort_round, Kind.ADMIN_REMOVE: self._remove,
            Kind.ADMIN_READMIT: self._readmit, Kind.ADMIN_REQUEST_AUDIT: self._request_audit,
        }

    # -- standing orders ------------------------------------------------------------------
    def _load(self) -> tuple[bool, set[str]]:
        if not self.path.exists():
            return False, set()
        data = read_json(self.path)
        if (not isinstance(data, dict) or not isinstance(data.get("paused"), bool)
                or not isinstance(data.get("removed"), list)
                or not all(isinstance(p, str) for p in data["removed"])):
            raise StateError(f"admin state {self.path} is not {{\"paused\": bool, \"removed\": "
                             "[ids]}; restore it from a backup or delete it to clear the "
                             "operators' pause and removals.")
        return data["paused"], set(data["removed"])

    def state(self) -> dict[str, Any]:
        """The standing orders, as status shows them."""
        return {"paused": self.conductor.paused, "removed": sorted(self.removed)}

    def _save(self) -> None:
        write_json_atomic(self.path, self.state())

    def eligible(self, online: Iterable[str]) -> list[str]:
        """The online participants that may be planned into a round (not removed)."""
        return [pid for pid in online if pid not in self.removed]

    def check_stall(self, cause: str) -> str | None:
        """Why no round can start now (:func:`stall_reason`), or None; logged once when the
        run becomes stalled or can proceed again (``cause``: what changed, e.g. "removing
        p01"), not at every check."""
        stalled = stall_reason(self.rounds.config, self.roster().active_ids(), self.removed)
        if stalled != self.stalled and stalled is not None:
            self.log.warning("run_stalled", reason=stalled, cause=cause,
                             summary=f"stalled: {stalled}, after {cause}; enrol another "
                                     "participant or readmit a removed one")
        elif stalled != self.stalled:
            self.log.info("run_unstalled", cause=cause,
                          summary=f"the run can proceed again after {cause}")
        self.stalled = stalled
        return stalled

    # -- commands -------------------------------------------------------------------------
    def answer(self, message: Message) -> dict[str, Any]:
        """Apply a verified operator's command; its result, or ProtocolError to refuse it."""
        result = self.handlers[message.header.kind](message)
        self.log.info("admin_command", peer=message.header.sender,
                      kind=message.header.kind.value, paused=self.conductor.paused,
                      removed=len(self.removed))
        return finite(result)

    def _status(self, message: Message) -> dict[str, Any]:
        self.journal.append("accepted", kind=message.header.kind.value,
                            peer=message.header.sender, durable=False)
        return {"status": self.status()}

    def _journal(self, message: Message) -> dict[str, Any]:
        tail = message.header.meta.get("tail")
        if type(tail) is not int or not 1 <= tail <= MAX_TAIL:
            raise ProtocolError(Reason.BAD_COMMAND, f"journal tail is {tail!r}; expected an "
                                                    f"integer from 1 to {MAX_TAIL}.")
        self.journal.append("accepted", kind=message.header.kind.value,
                            peer=message.header.sender, tail=tail, durable=False)
        return {"entries": tail_journal(self.journal.path, tail), "total": self.journal.seq}

    def _pause(self, message: Message) -> dict[str, Any]:
        changed = not self.conductor.paused
        self.conductor.pause(time.time())
        self._save()
        self._record("paused", message, changed=changed, round=self.rounds.round,
                     phase=self.rounds.phase)
        return {**self.state(), "changed": changed}

    def _resume(self, message: Message) -> dict[str, Any]:
        changed = self.conductor.paused
        self.conductor.resume(time.time())
        self._save()
        self._record("resumed", message, changed=changed, round=self.rounds.round,
                     phase=self.rounds.phase)
        return {**self.state(), "changed": changed}

    def _abort_round(self, message: Message) -> dict[str, Any]:
        wanted, rounds = message.header.round, self.rounds
        if wanted != rounds.round or rounds.phase != "collecting":
            raise ProtocolError(Reason.BAD_COMMAND, f"round {wanted} cannot be aborted: the "
                                                    f"session is at round {rounds.round}, "
                                                    f"{rounds.phase}; only a collecting round "
                                                    "can be.")
        digests = dict(rounds.digests)
        record = self.conductor.abort()
        # the accepted updates stay on disk (STATE/rounds/r/updates) and are named here
        self._record("round_aborted", message, round=record.round,
                     participants=record.participants,
                     accepted={pid: digests[pid] for pid in record.accepted})
        return {"aborted": record.round, "accepted": record.accepted, "next_round": rounds.round}

    def _participant(self, message: Message) -> str:
        pid = message.header.meta.get("participant")
        active = self.roster().active_ids()
        if pid not in active:
            raise ProtocolError(Reason.BAD_COMMAND, f"participant {str(pid)[:64]!r} is not an "
                                                    f"active participant of the roster; active: "
                                                    f"{active[:20]}.")
        return pid

    def _remove(self, message: Message) -> dict[str, Any]:
        pid = self._participant(message)
        changed = pid not in self.removed
        self.removed.add(pid)
        self._save()
        in_round = pid in self.rounds.plan and self.rounds.phase == "collecting"
        self.rounds.drop([pid])
        stalled = self.check_stall(f"removing {pid}")
        self._record("participant_removed", message, participant=pid, changed=changed,
                     left_round=self.rounds.round if in_round else None, stalled=stalled)
        return {**self.state(), "changed": changed, "left_round": in_round,
                "stalled": stalled}

    def _readmit(self, message: Message) -> dict[str, Any]:
        pid = self._participant(message)
        changed = pid in self.removed
        self.removed.discard(pid)
        self._save()
        self.check_stall(f"readmitting {pid}")
        self._record("participant_readmitted", message, participant=pid, changed=changed)
        return {**self.state(), "changed": changed}

    def _request_audit(self, message: Message) -> dict[str, Any]:
        pid = self._participant(message)
        audit, options = parse_command(message.payload)
        record = self.audit_requests.open(operator=message.header.sender, participant=pid,
                                          audit=audit, options=options)
        return {"request": record}

    def _record(self, event: str, message: Message, **fields: Any) -> None:
        """Journal (fsynced) a change an operator made, naming the operator and the kind."""
        self.journal.append(event, peer=message.header.sender, kind=message.header.kind.value,
                            **fields)


__all__ = ["MAX_TAIL", "AdminService", "finite"]
