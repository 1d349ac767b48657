"""The coordinator's side of the audits: hand a participant its own synthetic set, keep the
aggregate numbers it chooses to share, hear a site's answer to an operator's audit request.

``FETCH_SYNTHETIC`` carries no parameter: the set returned is the one distilled from the
*sender's* weights, and the sender is the verified (ZAP User-Id = signed sender) peer, so a
participant cannot ask for anyone else's images. The answer is a ``SYNTHETIC`` message whose
payload holds ``images`` (uint8 N, H, W, C) and ``labels`` (int64 N) of the latest checkpoint,
as the strategy exposes them (``strategies.MakesSyntheticSets``; the round state machine keeps those
of the latest checkpoint).

``AUDIT_REPORT`` carries the aggregates of an audit (``audits.shareable_aggregates``) as strict
JSON, checked against its kind's own keys (``audits.schema``: a synthetic audit or the one-run
DP audit; numbers for every measurement, a few short labels, bounded in size). Anything else is
refused ('malformed' / 'too-large'); accepted reports are written to
``STATE/audits/KIND/PID.json`` (atomically; the latest per participant and kind) and journaled,
then ACKed with the payload's SHA-256. A report whose ``meta.request`` names an operator's
request (``audits.requests``) answers it, and must be of the audit asked for ('not-requested'
when the sender has no such unanswered request). ``AUDIT_DECLINE`` is a site's refusal of a
request: journaled with its reason, ACKed with the request id.

All are answered on the connection they came in on: the one-shot ``latentfl participant
audit`` client shares the agent's keys but not its connection, and the agent keeps its own.
Before per-kind folders a synthetic audit was stored as ``STATE/audits/PID.json``; such files
are still read (as a synthetic audit) and are replaced by the new path on the next share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from latentfl.audits.shareable import SYNTHETIC_KIND
from latentfl.distill import to_uint8
from latentfl.errors import ProtocolError, Reason
from latentfl.platform.coordinator.audits.requests import AuditRequests
from latentfl.platform.coordinator.audits.schema import SCHEMAS, validate_aggregates
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.coordinator.store import StateStore, read_json, write_json_atomic
from latentfl.platform.crypto import COORDINATOR_ID
from latentfl.platform.protocol import Ack, Kind, Message, encode, pack_tensors
from latentfl.strategies import SyntheticImages

#: () -> (round of the latest checkpoint, its synthetic sets by participant)
SyntheticSource = Callable[[], tuple[int, Mapping[str, SyntheticImages]]]

AUDIT_KINDS = frozenset({Kind.FETCH_SYNTHETIC, Kind.AUDIT_REPORT, Kind.AUDIT_DECLINE})


def shared_audits_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "audits"


def shared_audit_path(state_dir: Path, kind: str, pid: str) -> Path:
    """Where the latest ``kind`` report shared by ``pid`` is kept."""
    return shared_audits_dir(state_dir) / kind / f"{pid}.json"


def load_shared_audits(state_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Every participant's stored audit records, by participant, then by report kind."""
    folder = shared_audits_dir(state_dir)
    legacy = sorted(folder.glob("*.json")) if folder.is_dir() else []  # synthetic, before kinds
    paths = legacy + [p for kind in sorted(SCHEMAS) for p in sorted((folder / kind).glob("*.json"))]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in paths:
        record = read_json(path)
        if isinstance(record, dict) and isinstance(record.get("aggregates"), dict):
            kind = str(record["aggregates"].get("kind"))
            out.setdefault(str(record.get("participant", path.stem)), {})[kind] = record
    return out


class AuditService:
    """Answers FETCH_SYNTHETIC, AUDIT_REPORT and AUDIT_DECLINE for the coordinator daemon (owns
    no socket)."""

    def __init__(self, store: StateStore, journal: Journal, *, session: str, signing_key: Any,
                 method: str, synthetic: SyntheticSource, requests: AuditRequests) -> None:
        self.store = store
        self.requests = requests
        self.journal = journal
        self.session = session
        self.signing_key = signing_key
        self.method = method
        self.synthetic = synthetic

    def answer(self, message: Message, round: int) -> list[bytes]:
        """The signed reply frames to a verified audit message; ProtocolError to refuse it."""
        pid = message.header.sender
        if message.header.kind is Kind.FETCH_SYNTHETIC:
            payload, meta = self.synthetic_for(pid)
            self.journal.append("accepted", kind="FETCH_SYNTHETIC", peer=pid,
                                synthetic_round=meta["synthetic_round"], images=meta["count"])
            kind = Kind.SYNTHETIC
        elif message.header.kind is Kind.AUDIT_REPORT:
            payload, meta = b"", self.store_aggregates(pid, message)
            kind = Kind.ACK
        else:  # AUDIT_DECLINE: a site's refusal of an operator's request
            payload, meta = b"", self.requests.declined(message)
            kind = Kind.ACK
        return encode(kind, session=self.session, round=round, sender=COORDINATOR_ID,
                      signing_key=self.signing_key, payload=payload, meta=meta)

    def synthetic_for(self, pid: str) -> tuple[bytes, dict[str, Any]]:
        """The latest checkpoint's synthetic images of ``pid`` as uint8 NHWC, and their meta."""
        round, sets = self.synthetic()
        chosen = sets.get(pid)
        if chosen is None:
            when = f"round {round}" if round > 0 else "no round finished yet"
            raise ProtocolError(
                Reason.NO_SYNTHETIC,
                f"the latest checkpoint ({self.method}, {when}) holds no synthetic set "
                f"distilled from {pid}'s weights",
            )
        labels = chosen.labels.to(torch.int64).reshape(-1)
        pixels = to_uint8(chosen.images.float(), chosen.mean, chosen.std)
        payload = pack_tensors({"images": torch.from_numpy(pixels), "labels": labels})
        return payload, {"synthetic_round": round, "count": int(labels.numel()),
                         "method": self.method[:32]}

    def store_aggregates(self, pid: str, message: Message) -> dict[str, Any]:
        """Validate, store (atomic) and journal a shared audit; the ACK's meta."""
        report = validate_aggregates(message.payload)
        request_id = message.header.meta.get("request")
        request = (None if request_id is None
                   else self.requests.answering(pid, request_id, report["kind"]))
        digest = message.header.payload_sha256
        record = {"participant": pid, "received": time.time(), "sha256": digest,
                  "request": request_id, "aggregates": report}
        write_json_atomic(shared_audit_path(self.store.root, report["kind"], pid), record)
        if report["kind"] == SYNTHETIC_KIND:  # the file name before per-kind folders
            (shared_audits_dir(self.store.root) / f"{pid}.json").unlink(missing_ok=True)
        self.journal.append("accepted", kind="AUDIT_REPORT", peer=pid, sha256=digest,
                            audit=report["kind"], flagged=report["flagged"], request=request_id,
                            verdicts={v["metric"]: v["status"] for v in report["verdicts"]})
        if request is not None:
            self.requests.answered(request, digest)
        return Ack(digest, request_id if isinstance(request_id, str) else None).meta()


__all__ = ["AUDIT_KINDS", "AuditService", "load_shared_audits", "shared_audit_path",
           "shared_audits_dir", "validate_aggregates"]
