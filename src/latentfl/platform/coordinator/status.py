"""What a coordinator's consortium looks like now, from its roster, state folder and journal.

Two sources, each for what it can answer truthfully:

- ``STATE/status.json``, rewritten (atomically) by the running daemon: the round in progress,
  its phase, who is connected. It says nothing once the daemon is gone, so "online" is only
  shown while the pid in ``STATE/coordinator.pid`` is alive.
- The journal and the checkpoints, which survive restarts: every accepted update, refusal and
  declined task with its round and reason, the refused CURVE handshakes (``zap_refused``), and
  the closed rounds with their metrics.

:func:`collect_status` joins them with the roster, so every enrolled participant is listed,
including those never seen and those revoked. ``latentfl status`` (text, ``--json``, ``--html``)
and the remote admin's status answer both call it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from latentfl.errors import LatentFLError, StateFolderError
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.coordinator.journal import read_journal, verify_against_checkpoint
from latentfl.platform.coordinator.peers import PeerTable
from latentfl.platform.coordinator.store import read_json
from latentfl.platform.crypto import load_roster
from latentfl.platform.protocol import UPDATE_KINDS

#: A participant's state, as listed.
STATES = ("never-seen", "online", "offline", "revoked", "not-enrolled")


def daemon_running(pid_path: Path) -> int | None:
    """The pid in ``pid_path`` if that process is alive, else None."""
    try:
        pid = int(Path(pid_path).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def status_snapshot(config: Any, rounds: Any, peers: PeerTable, *, endpoint: str,
                    now: float, stopped: bool = False) -> dict[str, Any]:
    """The JSON the daemon writes to status.json (``rounds`` a Rounds): the live view only."""
    phase = "stopped" if stopped and rounds.phase != "finished" else rounds.phase
    return {
        "session": config.session, "round": rounds.round, "rounds": config.rounds,
        "phase": phase, "updated": now, "endpoint": endpoint,
        "planned": rounds.plan, "received": sorted(rounds.updates),
        "participants": {pid: {"online": p.online, "last_seen": p.last_seen}
                         for pid, p in peers.items()},
        "history": [vars(h) for h in rounds.history],
    }


def stall_reason(config: CoordinatorConfig, active: list[str], removed: Any) -> str | None:
    """Why no round can start with the participants that may still be planned (enrolled, not
    revoked, not removed), or None: e.g. "min_participants 2 cannot be met (1 eligible)"."""
    eligible = len(set(active) - set(removed))
    for key, need in (("min_participants", config.min_participants),
                      ("min_updates", config.min_updates)):
        if eligible < need:
            return f"{key} {need} cannot be met ({eligible} eligible)"
    return None


def _participant_row(state: str, last_seen: float | None) -> dict[str, Any]:
    return {"state": state, "last_seen": last_seen, "accepted": 0, "refused": 0,
            "declined": 0, "set_aside": 0, "refused_reasons": {}, "declined_reasons": {},
            "rounds": []}


def _round_cell(row: dict[str, Any], round: int) -> dict[str, Any]:
    for cell in row["rounds"]:
        if cell["round"] == round:
            return cell
    cell = {"round": round, "accepted": 0, "refused": 0, "declined": 0, "set_aside": 0,
            "reasons": []}
    row["rounds"].append(cell)
    return cell


def _tally(entries: list[dict[str, Any]], rows: dict[str, dict[str, Any]],
           new_row: Any) -> dict[str, Any]:
    """Count the journal's per-participant events into ``rows``; return the ZAP refusals."""
    refused_keys: dict[str, dict[str, Any]] = {}
    for e in entries:
        event, pid = e.get("event"), e.get("peer")
        if event == "zap_refused":
            fp = str(e.get("fingerprint"))
            key = refused_keys.setdefault(fp, {"fingerprint": fp,
                                               "participant": e.get("participant"),
                                               "attempts": 0, "last_seen": None})
            key["attempts"] += int(e.get("count") or 1)
            key["last_seen"] = e.get("time")
            continue
        if event == "set_aside" and isinstance(pid, str) and isinstance(e.get("round"), int):
            row = rows.get(pid) or rows.setdefault(pid, new_row(pid))
            row["set_aside"] += 1
            cell = _round_cell(row, e["round"])
            cell["set_aside"] += 1
            cell["reasons"].append(set_aside_reason(e))
            continue
        if not isinstance(pid, str) or event not in ("accepted", "refused", "declined"):
            continue
        row = rows.get(pid) or rows.setdefault(pid, new_row(pid))
        row["last_seen"] = max(row["last_seen"] or 0.0, float(e.get("time") or 0.0)) or None
        if event == "accepted" and (e.get("kind") not in UPDATE_KINDS or e.get("resent")):
            continue  # HELLO, heartbeats, BYE, re-sends: seen, not counted
        row[event] += 1
        reason = str(e.get("reason"))
        if event != "accepted":
            reasons = row[f"{event}_reasons"]
            reasons[reason] = reasons.get(reason, 0) + 1
        if isinstance(e.get("round"), int) and e["round"] > 0:
            cell = _round_cell(row, e["round"])
            cell[event] += 1
            if event != "accepted":
                cell["reasons"].append(f"{event}: {reason}")
    for row in rows.values():
        row["rounds"].sort(key=lambda c: c["round"])
    attempts = sum(k["attempts"] for k in refused_keys.values())
    return {"attempts": attempts, "keys": sorted(refused_keys.values(),
                                                 key=lambda k: -k["attempts"])}


def set_aside_reason(entry: dict[str, Any]) -> str:
    """One phrase for a journaled ``set_aside`` entry: rule, action, score and threshold."""
    return (f"set aside by {entry.get('rule')} ({entry.get('action')}): score "
            f"{float(entry.get('score') or 0):.4g} > threshold "
            f"{float(entry.get('threshold') or 0):.4g}")


def _journal(state_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The journal's check result (its chain, and that it still holds what the latest
    checkpoint recorded) and its entries (what could be read of a damaged one)."""
    path = state_dir / "journal.jsonl"
    info: dict[str, Any] = {"path": str(path), "entries": 0, "verified": False, "error": None}
    try:
        info["entries"], info["verified"] = verify_against_checkpoint(path, state_dir), True
    except LatentFLError as exc:
        info["error"] = str(exc)
    if not path.exists():
        return info, []
    try:
        entries = read_journal(path)
    except ValueError:
        entries = []
    info["entries"] = info["entries"] or len(entries)
    return info, entries


def _history(state_dir: Path, live: dict[str, Any]) -> list[dict[str, Any]]:
    """The closed rounds, from the latest checkpoint (the live status file may be older)."""
    latest = state_dir / "latest.json"
    try:
        round = read_json(latest)["round"]
        meta = read_json(state_dir / "checkpoints" / f"round-{round:06d}.json")
        return list(meta.get("history", []))
    except (LatentFLError, KeyError, TypeError, ValueError):
        return list(live.get("history", []))


def unreadable_state(state_dir: Path) -> StateFolderError:
    """The one sentence for a state folder this user may not read (the daemon runs under its
    own user, as docs/deployment.md recommends)."""
    return StateFolderError(f"cannot read {state_dir}: permission denied (run as the daemon's "
                            "user or use `latentfl admin status`).")


def no_run_yet(state_dir: Path) -> StateFolderError:
    """The one sentence for a state folder no coordinator has run in (nothing is corrupt: the
    command came before the run, or state_dir names another folder)."""
    return StateFolderError(f"no run yet in {state_dir}: start the coordinator first (`latentfl "
                            "coordinator --config FILE`), or check state_dir in the config.")


def collect_status(config: CoordinatorConfig, *, now: float | None = None,
                   live: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`_collect_status`; StateFolderError with one sentence when this user may not read
    the state folder."""
    try:
        return _collect_status(config, now=now, live=live)
    except PermissionError:
        raise unreadable_state(Path(config.state_dir)) from None


def _collect_status(config: CoordinatorConfig, *, now: float | None = None,
                    live: dict[str, Any] | None = None) -> dict[str, Any]:
    """The consortium's status as a JSON-able dict.

    Reads only: the roster, ``STATE/status.json`` (or ``live``, the running daemon's own
    snapshot, which the file may lag by half a second), the checkpoints and the journal; never
    creates the state folder. A damaged journal is reported in ``journal.error`` (its readable
    lines still count) rather than raised, so an operator still sees the rest.
    """
    now = time.time() if now is None else now
    state_dir = Path(config.state_dir)
    roster = load_roster(config.roster)
    live_path = state_dir / "status.json"
    if live is None:
        live = read_json(live_path) if live_path.exists() else {}
    pid = daemon_running(state_dir / "coordinator.pid")
    live_peers = live.get("participants", {})

    def new_row(participant: str) -> dict[str, Any]:
        entry = roster.participants.get(participant)
        seen = (live_peers.get(participant) or {}).get("last_seen") or None
        if entry is None:
            return _participant_row("not-enrolled", seen)
        if not entry.active:
            return _participant_row("revoked", seen)
        if pid and (live_peers.get(participant) or {}).get("online"):
            return _participant_row("online", seen)
        return _participant_row("offline" if seen else "never-seen", seen)

    rows = {p: new_row(p) for p in roster.participants}
    journal, entries = _journal(state_dir)
    refused = _tally(entries, rows, new_row)
    for operator in roster.operators:  # their admin commands are journaled; never participants
        rows.pop(operator, None)
    for row in rows.values():
        if row["state"] == "never-seen" and row["last_seen"]:
            row["state"] = "offline"
    history = _history(state_dir, live)
    finished = bool(history) and history[-1].get("round", 0) >= config.rounds
    if pid:
        phase = live.get("phase", "starting")
    else:
        phase = "finished" if finished else ("stopped" if live else "not-started")
    admin = live.get("admin") or {}
    stalled = stall_reason(config, roster.active_ids(), admin.get("removed", []))
    if pid and admin.get("paused") and phase in ("waiting", "collecting"):
        phase = "paused"  # an operator's pause: no round opens or closes until resumed
    elif pid and phase in ("waiting", "collecting") and stalled:
        phase = "stalled"  # no later round can start (the one collecting may still close)
    by_round: dict[int, Counter] = {}
    for row in rows.values():
        for cell in row["rounds"]:
            by_round.setdefault(cell["round"], Counter()).update(
                {k: cell[k] for k in ("accepted", "refused", "declined", "set_aside")})
    rounds = [{"round": h.get("round"), "planned": len(h.get("participants", [])),
               "accepted": len(h.get("accepted", [])), "seconds": h.get("seconds"),
               "aborted": bool(h.get("aborted")),
               "metrics": h.get("metrics", {}),
               "refused": by_round.get(h.get("round"), Counter())["refused"],
               "declined": by_round.get(h.get("round"), Counter())["declined"],
               "set_aside": list(h.get("set_aside", []))}
              for h in history]
    current = None
    if pid and phase in ("waiting", "collecting", "aggregating", "paused", "stalled"):
        current = {"round": live.get("round"), "phase": live.get("phase", phase),
                   "planned": list(live.get("planned", [])),
                   "received": list(live.get("received", []))}
    return {
        "session": config.session, "generated": now,
        "coordinator": {"running": pid is not None, "pid": pid,
                        "endpoint": live.get("endpoint", config.bind),
                        "updated": live.get("updated")},
        "phase": phase, "rounds_done": len(history), "rounds": config.rounds,
        "min_participants": config.min_participants,
        "stalled": stalled if phase == "stalled" else None,
        "paused": bool(admin.get("paused")),
        "removed": sorted(admin.get("removed", [])),
        "round_in_progress": current,
        "participants": rows,
        "refused_connections": refused,
        "history": rounds,
        "journal": journal,
    }


__all__ = ["STATES", "collect_status", "daemon_running", "no_run_yet", "set_aside_reason",
           "stall_reason", "status_snapshot", "unreadable_state"]
