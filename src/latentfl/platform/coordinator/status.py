"""``latentfl status --config FILE``: what the coordinator is doing, read from its state folder.

The daemon rewrites ``STATE/status.json`` (atomically) whenever something changes; this module
renders it. Reading a file rather than asking the daemon over the network means status works
with no keys, and also after the daemon stopped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from latentfl.errors import StateError
from latentfl.platform.coordinator.peers import PeerTable
from latentfl.platform.coordinator.store import read_json


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


def read_status(state_dir: Path) -> dict[str, Any]:
    path = Path(state_dir) / "status.json"
    if not path.exists():
        raise StateError(f"no status file {path}; the coordinator has not run with this "
                         "state_dir yet.")
    data = read_json(path)
    if not isinstance(data, dict):
        raise StateError(f"status file {path} is not a JSON object.")
    return data


def status_snapshot(config: Any, rounds: Any, peers: PeerTable, *, endpoint: str,
                    now: float, stopped: bool = False) -> dict[str, Any]:
    """The JSON the daemon writes to status.json (``rounds`` a Rounds)."""
    last = rounds.history[-1] if rounds.history else None
    phase = "stopped" if stopped and rounds.phase != "finished" else rounds.phase
    return {
        "session": config.session, "round": rounds.round, "rounds": config.rounds,
        "phase": phase, "updated": now, "endpoint": endpoint,
        "planned": rounds.plan, "received": sorted(rounds.updates),
        "participants": {pid: {"online": p.online, "last_seen": p.last_seen,
                               "accepted": p.accepted, "refused": p.refused}
                         for pid, p in peers.items()},
        "last_round": vars(last) if last else None,
        "history": [vars(h) for h in rounds.history],
    }


def _ago(t: float | None, now: float) -> str:
    if not t:
        return "never"
    return f"{now - t:.0f}s ago"


def render_status(status: dict[str, Any], *, running: int | None, now: float | None = None) -> str:
    """Human-readable lines for a status dict."""
    now = time.time() if now is None else now
    daemon = f"running (pid {running})" if running else "not running"
    total = status.get("rounds") or 0
    shown_round = min(status.get("round") or 0, total)
    lines = [
        f"session   {status.get('session')}   coordinator {daemon}",
        f"round     {shown_round} of {total}   phase {status.get('phase')}",
        f"updated   {_ago(status.get('updated'), now)}",
        "",
        f"{'participant':<20} {'online':<7} {'last seen':<12} {'accepted':>8} {'refused':>8}",
    ]
    for pid, p in sorted(status.get("participants", {}).items()):
        online = "yes" if p.get("online") and running else "no"
        lines.append(f"{pid:<20} {online:<7} "
                     f"{_ago(p.get('last_seen'), now):<12} {p.get('accepted', 0):>8} "
                     f"{p.get('refused', 0):>8}")
    last = status.get("last_round")
    if last:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.get("metrics", {}).items()))
        lines += ["", f"last round {last.get('round')}: {len(last.get('accepted', []))} updates "
                      f"in {last.get('seconds', 0):.1f}s; {metrics}"]
    return "\n".join(lines)


__all__ = ["daemon_running", "read_status", "render_status", "status_snapshot"]
