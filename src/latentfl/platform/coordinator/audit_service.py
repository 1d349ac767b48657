"""The coordinator's side of the audits: hand a participant its own synthetic set, keep the
aggregate numbers it chooses to share.

``FETCH_SYNTHETIC`` carries no parameter: the set returned is the one distilled from the
*sender's* weights, and the sender is the verified (ZAP User-Id = signed sender) peer, so a
participant cannot ask for anyone else's images. The answer is a ``SYNTHETIC`` message whose
payload holds ``images`` (uint8 N, H, W, C) and ``labels`` (int64 N) of the latest checkpoint,
as the strategy exposes them (``Strategy.synthetic_sets``; the round state machine keeps those
of the latest checkpoint).

``AUDIT_REPORT`` carries the aggregates of a synthetic audit (``audits.shareable_aggregates``)
as strict JSON: known keys only, numbers for every measurement, a few short labels, bounded in
size. Anything else is refused ('malformed' / 'too-large'); accepted reports are written to
``STATE/audits/PID.json`` (atomically) and journaled, then ACKed with the payload's SHA-256.

Both are answered on the connection they came in on: the one-shot ``latentfl participant
audit`` client shares the agent's keys but not its connection, and the agent keeps its own.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from latentfl.distill import to_uint8
from latentfl.errors import ProtocolError, Reason
from latentfl.platform.coordinator.journal import Journal
from latentfl.platform.coordinator.store import StateStore, read_json, write_json_atomic
from latentfl.platform.crypto import COORDINATOR_ID
from latentfl.platform.protocol import Kind, Message, encode, pack_tensors, unpack_json
from latentfl.strategies import SyntheticImages

#: () -> (round of the latest checkpoint, its synthetic sets by participant)
SyntheticSource = Callable[[], tuple[int, Mapping[str, SyntheticImages]]]

AUDIT_KINDS = frozenset({Kind.FETCH_SYNTHETIC, Kind.AUDIT_REPORT})
MAX_AGGREGATE_BYTES = 16 * 1024
MAX_VERDICTS = 16
MAX_NUMBERS = 24
MAX_LABEL = 200
AUDIT_TYPES = ("synthetic-audit",)
STATUSES = ("flag", "pass", "info")
_TOP_KEYS = {"kind", "flagged", "sizes", "verdicts"}
_VERDICT_KEYS = {"metric", "title", "value", "status", "p_value", "alpha", "numbers"}
_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")
_LABEL = re.compile(r"[ -~]*")  # printable ASCII: rendered (escaped) in the operator's report


def _number(value: Any, where: str, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(Reason.MALFORMED, f"audit aggregate {where} is {str(value)[:40]!r}; "
                                              "expected a number")
    if not math.isfinite(value):
        raise ProtocolError(Reason.MALFORMED, f"audit aggregate {where} is {value}; expected a "
                                              "finite number")


def _keys(obj: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProtocolError(Reason.MALFORMED, f"audit aggregate {where} is a {type(obj).__name__}; "
                                              "expected an object")
    extra = sorted(set(obj) - allowed)
    if extra:
        raise ProtocolError(Reason.MALFORMED, f"audit aggregate {where} has unknown key(s) "
                                              f"{[k[:40] for k in extra[:5]]}; expected only "
                                              f"{sorted(allowed)}")
    return obj


def _named_numbers(obj: Any, where: str, *, optional: bool) -> None:
    """An object of at most MAX_NUMBERS snake_case names to finite numbers (or None if optional)."""
    if not isinstance(obj, dict) or len(obj) > MAX_NUMBERS:
        raise ProtocolError(
            Reason.MALFORMED,
            f"audit aggregate {where} must be an object of at most {MAX_NUMBERS} numbers",
        )
    for key, value in obj.items():
        if not _NAME.fullmatch(key):
            raise ProtocolError(
                Reason.MALFORMED,
                f"audit aggregate {where} name {key[:40]!r} is not lowercase snake_case",
            )
        _number(value, f"{where}.{key}", optional=optional)


def validate_aggregates(data: bytes) -> dict[str, Any]:
    """Parse and check a shared audit; ProtocolError ('too-large' / 'malformed') if refused."""
    if len(data) > MAX_AGGREGATE_BYTES:
        raise ProtocolError(
            Reason.TOO_LARGE,
            f"audit aggregates are {len(data)} bytes; expected at most {MAX_AGGREGATE_BYTES}",
        )
    report = _keys(unpack_json(data, max_bytes=MAX_AGGREGATE_BYTES), _TOP_KEYS, "report")
    if report.get("kind") not in AUDIT_TYPES:
        raise ProtocolError(
            Reason.MALFORMED,
            f"audit aggregate kind is {str(report.get('kind'))[:40]!r};"
            f" expected one of {list(AUDIT_TYPES)}",
        )
    if not isinstance(report.get("flagged"), bool):
        raise ProtocolError(
            Reason.MALFORMED, "audit aggregate 'flagged' is missing or not a boolean"
        )
    _named_numbers(report.get("sizes", {}), "sizes", optional=False)
    verdicts = report.get("verdicts")
    if not isinstance(verdicts, list) or not 1 <= len(verdicts) <= MAX_VERDICTS:
        raise ProtocolError(Reason.MALFORMED, f"audit aggregate verdicts must be a list of 1 to "
                                              f"{MAX_VERDICTS} objects")
    for i, verdict in enumerate(verdicts):
        _keys(verdict, _VERDICT_KEYS, f"verdicts[{i}]")
        if not (isinstance(verdict.get("metric"), str) and _NAME.fullmatch(verdict["metric"])):
            raise ProtocolError(Reason.MALFORMED, f"audit aggregate verdicts[{i}].metric is not a "
                                                  "metric name")
        if verdict.get("status") not in STATUSES:
            raise ProtocolError(Reason.MALFORMED, f"audit aggregate verdicts[{i}].status is "
                                                  f"{str(verdict.get('status'))[:20]!r}; expected "
                                                  f"one of {list(STATUSES)}")
        for label in ("title", "value"):
            text = verdict.get(label, "")
            if not (isinstance(text, str) and len(text) <= MAX_LABEL
                    and _LABEL.fullmatch(text)):
                raise ProtocolError(Reason.MALFORMED, f"audit aggregate verdicts[{i}].{label} must "
                                                      f"be printable text of at most {MAX_LABEL} "
                                                      "characters")
        _number(verdict.get("p_value"), f"verdicts[{i}].p_value")
        _number(verdict.get("alpha"), f"verdicts[{i}].alpha")
        _named_numbers(verdict.get("numbers", {}), f"verdicts[{i}].numbers", optional=True)
    return report


def shared_audits_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "audits"


def load_shared_audits(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Every participant's stored audit record (``STATE/audits/PID.json``), by participant."""
    folder = shared_audits_dir(state_dir)
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read_json(path)
        if isinstance(record, dict) and isinstance(record.get("aggregates"), dict):
            out[path.stem] = record
    return out


class AuditService:
    """Answers FETCH_SYNTHETIC and AUDIT_REPORT for the coordinator daemon (owns no socket)."""

    def __init__(self, store: StateStore, journal: Journal, *, session: str, signing_key: Any,
                 method: str, synthetic: SyntheticSource) -> None:
        self.store = store
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
        else:
            payload, meta = b"", self.store_aggregates(pid, message)
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
        digest = message.header.payload_sha256
        record = {"participant": pid, "received": time.time(), "sha256": digest,
                  "aggregates": report}
        write_json_atomic(shared_audits_dir(self.store.root) / f"{pid}.json", record)
        self.journal.append("accepted", kind="AUDIT_REPORT", peer=pid, sha256=digest,
                            audit=report["kind"], flagged=report["flagged"],
                            verdicts={v["metric"]: v["status"] for v in report["verdicts"]})
        return {"sha256": digest}


__all__ = ["AUDIT_KINDS", "AuditService", "load_shared_audits", "shared_audits_dir",
           "validate_aggregates"]
