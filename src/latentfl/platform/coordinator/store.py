"""The coordinator's durable state folder.

Layout (all files written temp -> fsync -> rename, then the folder fsynced)::

    STATE/journal.jsonl                      hash-chained journal (journal.py)
    STATE/status.json                        what ``latentfl status`` shows
    STATE/coordinator.pid                    pid of the running daemon
    STATE/coordinator.lock                   flock held by the running daemon (one per folder)
    STATE/replay.log                         (sender, nonce) pairs seen, for replay refusal
    STATE/admin.json                         operators' standing orders: paused, removed ids
    STATE/audits/KIND/PID.json               audit numbers a participant shared, per report kind
                                             (audits/service.py; before: STATE/audits/PID.json)
    STATE/audit_requests.json                operators' audit requests (audits/requests.py)
    STATE/latest.json                        {"round": r}: the last completed round
    STATE/checkpoints/round-000r.safetensors strategy.state_dict() tensors after round r
    STATE/checkpoints/round-000r.json        its JSON meta, round metrics and participants
    STATE/rounds/000r/plan.json              who takes part in round r (written before any TASK)
    STATE/rounds/000r/updates/PID.safetensors  an accepted update's payload, the bytes as
                                             received and checked (their SHA-256 is the
                                             signed header's payload_sha256)
    STATE/rounds/000r/updates/PID.json       its counts, metrics and that payload SHA-256

An update file is on disk (fsynced) before its ACK leaves, so a restarted coordinator resumes
round r with every update it acknowledged, and counts each once (one file per participant).
The payload is stored as it came, never re-serialised from the decoded tensors: it is written
only after the strict decode accepted it, so a stored file is always one that passed. A folder
written before the JSON beside it existed (the counts as the file's safetensors metadata) is
still read.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from latentfl.durable import (
    fsync_dir,
    json_bytes,
    write_atomic,
    write_atomic_many,
    write_json_atomic,
)
from latentfl.errors import StateError, StateFolderError
from latentfl.strategies import Update

_UPDATE_META = "latentfl_update"
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _counts(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(c) for c in value)


def _update_info(update: Update, digest: str) -> bytes:
    """The JSON beside an update's payload: its counts, metrics and the payload digest."""
    info = {"num_examples": update.num_examples, "num_steps": update.num_steps,
            "metrics": update.metrics, "class_counts": update.class_counts,
            "payload_sha256": digest}
    return (json.dumps(info, sort_keys=True) + "\n").encode("utf-8")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StateError(f"state file {path} is missing.") from None
    except (OSError, ValueError) as exc:
        raise StateError(f"state file {path} is corrupt: {exc}.") from None


@dataclass(frozen=True)
class Checkpoint:
    round: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


class StateStore:
    """Reads and writes the files of one coordinator state folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            for sub in ("checkpoints", "rounds"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateFolderError(f"state_dir {self.root} cannot be created or used "
                                   f"({exc.strerror}); expected a folder this user can read "
                                   "and write.") from None
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Hold the folder for this process; StateFolderError if another coordinator holds it
        (the folder is busy, not damaged: exit 6, not 4)."""
        try:
            fd = os.open(self.root / "coordinator.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateFolderError(f"state_dir {self.root} cannot be written ({exc.strerror}); "
                                   "expected a folder this user can read and write.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateFolderError(f"state_dir {self.root} is in use by another coordinator; "
                                   "stop it first or choose another state_dir.") from None
        self._lock_fd = fd

    def remove_orphan_temps(self) -> int:
        """Delete the temp files a crash left mid-write (``write_atomic``'s ``.NAME.*.tmp``,
        never renamed, so never part of the state); return how many. Call while locked."""
        count = 0
        for path in self.root.rglob(".*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)
                count += 1
        return count

    def record_journal_anchor(self, anchor: dict[str, Any]) -> None:
        """Re-point the latest checkpoint at the journal as it is now (the operator accepted a
        journal loss with --accept-journal-loss)."""
        round = self.latest_round()
        if round is None:
            return
        path = self.root / "checkpoints" / f"round-{round:06d}.json"
        write_json_atomic(path, {**read_json(path), "journal": anchor})

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def journal_path(self) -> Path:
        return self.root / "journal.jsonl"

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    @property
    def pid_path(self) -> Path:
        return self.root / "coordinator.pid"

    @property
    def replay_path(self) -> Path:
        return self.root / "replay.log"

    @property
    def admin_path(self) -> Path:
        return self.root / "admin.json"

    # -- checkpoints --------------------------------------------------------------------
    def latest_round(self) -> int | None:
        path = self.root / "latest.json"
        if not path.exists():
            return None
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("round"), int):
            raise StateError(f"state file {path} has no integer 'round'.")
        return data["round"]

    def save_checkpoint(self, round: int, tensors: dict[str, torch.Tensor],
                        meta: dict[str, Any]) -> None:
        """Write round ``round``'s strategy state (its tensors and JSON meta made durable
        together), then point latest.json at it."""
        base = self.root / "checkpoints" / f"round-{round:06d}"
        clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        write_atomic_many([(base.with_suffix(".safetensors"), st_save(clean)),
                           (base.with_suffix(".json"), json_bytes(meta))])
        write_json_atomic(self.root / "latest.json", {"round": round})

    def load_checkpoint(self, round: int) -> Checkpoint:
        base = self.root / "checkpoints" / f"round-{round:06d}"
        path = base.with_suffix(".safetensors")
        try:
            tensors = st_load(path.read_bytes())
        except (OSError, SafetensorError) as exc:
            raise StateError(f"checkpoint {path} cannot be read: {exc}.") from None
        return Checkpoint(round, tensors, read_json(base.with_suffix(".json")))

    # -- the round in progress ----------------------------------------------------------
    def round_dir(self, round: int) -> Path:
        return self.root / "rounds" / f"{round:06d}"

    def save_plan(self, round: int, participants: list[str]) -> None:
        write_json_atomic(self.round_dir(round) / "plan.json",
                          {"round": round, "participants": participants})

    def load_plan(self, round: int) -> list[str] | None:
        path = self.round_dir(round) / "plan.json"
        if not path.exists():
            return None
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("participants"), list):
            raise StateError(f"round plan {path} has no 'participants' list.")
        return [str(p) for p in data["participants"]]

    def _update_path(self, round: int, participant: str) -> Path:
        if not _SAFE_ID.match(participant):
            raise StateError(f"participant id {participant!r} cannot name a file; expected "
                             "letters, digits, '_', '.', '-'.")
        return self.round_dir(round) / "updates" / f"{participant}.safetensors"

    def save_update(self, update: Update, digest: str, payload: bytes) -> None:
        """Persist an accepted update (fsynced): its payload as received, and its counts and
        the payload digest beside it."""
        self.save_updates([(update, digest, payload)])

    def save_updates(self, items: list[tuple[Update, str, bytes]]) -> None:
        """Persist several accepted updates, each (update, payload SHA-256, payload bytes as
        received), made durable together (``write_atomic_many``). The JSON comes first in the
        list, so it is renamed into place before its payload file."""
        files: list[tuple[Path, bytes]] = []
        for update, digest, payload in items:
            path = self._update_path(update.round, update.participant)
            files += [(path.with_suffix(".json"), _update_info(update, digest)), (path, payload)]
        write_atomic_many(files)

    def discard_updates(self, updates: list[Update]) -> None:
        """Remove update files whose acceptance could not be journaled (never acked)."""
        paths = [self._update_path(u.round, u.participant) for u in updates]
        for path in paths:
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
        for folder in {path.parent for path in paths}:
            if folder.exists():
                fsync_dir(folder)

    def load_updates(self, round: int) -> list[tuple[Update, str]]:
        """Every persisted update of ``round`` with its payload digest, in participant order."""
        folder = self.round_dir(round) / "updates"
        out: list[tuple[Update, str]] = []
        for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            try:
                tensors = st_load(path.read_bytes())
                info = self._update_info(path)
            except (OSError, SafetensorError, KeyError, ValueError) as exc:
                raise StateError(f"accepted update {path} cannot be read: {exc}.") from None
            update = Update(participant=path.stem, round=round, weights=tensors,
                            num_examples=int(info["num_examples"]),
                            num_steps=int(info["num_steps"]),
                            metrics={k: float(v) for k, v in info["metrics"].items()},
                            class_counts=_counts(info.get("class_counts")))
            out.append((update, str(info["payload_sha256"])))
        return out

    @staticmethod
    def _update_info(path: Path) -> dict[str, Any]:
        """The counts and digest of the update file ``path``: its JSON, or in a folder written
        before that existed, the file's own safetensors metadata."""
        beside = path.with_suffix(".json")
        if beside.exists():
            return json.loads(beside.read_text(encoding="utf-8"))
        with safe_open(path, framework="pt") as fh:
            return json.loads((fh.metadata() or {})[_UPDATE_META])


__all__ = ["Checkpoint", "StateStore", "read_json", "write_atomic", "write_json_atomic"]
