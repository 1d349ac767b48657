"""Resident memory of a real coordinator and real participant agents, idle and after rounds.

A fresh consortium (``latentfl keys init``'s keys and roster) on 127.0.0.1 with the coordinator
and the agents as separate ``python -m latentfl`` processes. One more participant is enrolled
than is started, and the coordinator waits for all of them, so at first every daemon is up,
connected and idle: that RSS is the "idle" column (read from ``/proc/PID/status`` once the
coordinator's status shows every started agent online and the RSS has stopped moving). Then
the last agent starts, the rounds run (plain FedAvg, tiny local work), and the peak RSS of each
process (``VmHWM``) is read just before it exits.

Memory does not depend on the machine's load, so these figures can be taken on a busy box. The
data cache must be warm: the first agent to start after a change of source tree decodes the
built-in set and writes the cache, and its idle RSS reads about 30 MB higher; run twice.

    python benchmarks/process_memory.py --participants 3 --width 128 --rounds 3

Issue 27's targets are stated for the CPU build of torch (the CUDA build maps about 280 MB
more per process, GPU or not). To measure on it, make a virtual environment beside the repo,
with torch pinned so that pip cannot take a CUDA build, then latentfl's other dependencies
(pyproject.toml; torchvision is left out: no daemon imports it), then this tree without
dependencies::

    python3.11 -m venv /work/cpu-venv
    /work/cpu-venv/bin/pip install torch==2.13.0     # the +cpu wheel from /opt/wheels
    /work/cpu-venv/bin/pip install numpy safetensors pillow structlog pyzmq cryptography \
        pycryptodome tenseal matplotlib tqdm scipy opt_einsum  # the dev venv's versions
    /work/cpu-venv/bin/pip install --no-deps opacus  # its dependencies would pull a torch
    /work/cpu-venv/bin/pip install --no-deps -e .
    /work/cpu-venv/bin/python benchmarks/process_memory.py --participants 2 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from latentfl.platform.local import COORDINATOR, LocalConsortium
from latentfl.platform.supervisor import wait_until

SESSION = "memory-bench"


def _status_mb(pid: int, field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of process ``pid`` in MB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _online(consortium: LocalConsortium) -> int:
    try:
        live = json.loads((consortium.state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return 0
    return sum(bool(p.get("online")) for p in live.get("participants", {}).values())


def _settled(pids: list[int], quiet_s: float = 3.0, timeout_s: float = 120.0) -> list[float]:
    """RSS of each process once none has changed by more than 1 MB for ``quiet_s``."""
    last = [_status_mb(p, "VmRSS") for p in pids]
    stable_since = time.monotonic()
    deadline = stable_since + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = [_status_mb(p, "VmRSS") for p in pids]
        if any(abs(a - b) > 1 for a, b in zip(now, last, strict=True)):
            stable_since = time.monotonic()
        last = now
        if time.monotonic() - stable_since >= quiet_s:
            break
    return last


def run(participants: int, width: int, rounds: int, root: Path) -> dict[str, float]:
    ids = [f"p{i:02d}" for i in range(participants + 1)]
    coordinator = {
        "rounds": rounds, "device": "cpu", "max_test": 100, "heartbeat_timeout": 600.0, "round_deadline": 600.0,
        "strategy": {"method": "fedavg",
                     "model": {"name": "convnet", "options": {"width": width, "depth": 3}},
                     "local": {"epochs": 1, "batch_size": 8, "max_steps": 1}},
    }
    with LocalConsortium(root, ids, session=SESSION, coordinator=coordinator) as consortium:
        consortium.start_coordinator()
        for pid in ids[:-1]:
            consortium.start_participant(pid)
        wait_until(lambda: _online(consortium) >= participants, 180, "every agent to say HELLO")
        procs = consortium.supervisor.procs
        pids = [procs[COORDINATOR].pid] + [procs[pid].pid for pid in ids[:-1]]
        idle = _settled(pids)
        consortium.start_participant(ids[-1])
        peaks = {name: 0.0 for name in procs}
        deadline = time.monotonic() + 600
        while procs[COORDINATOR].poll() is None and time.monotonic() < deadline:
            for name, proc in procs.items():
                peaks[name] = max(peaks[name], _status_mb(proc.pid, "VmHWM"))
            time.sleep(0.2)
        if procs[COORDINATOR].returncode != 0:
            raise RuntimeError(f"the coordinator exited with {procs[COORDINATOR].returncode}:\n"
                               f"{consortium.supervisor.tail(COORDINATOR)}")
        agent_peaks = [peaks[pid] for pid in ids]
        return {"coordinator_idle": idle[0], "agent_idle": max(idle[1:]),
                "coordinator_peak": peaks[COORDINATOR], "agent_peak": max(agent_peaks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=3,
                        help="Agents started idle (one more joins for the rounds).")
    parser.add_argument("--width", type=int, default=128, help="ConvNet-3 width of the model.")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="latentfl-memory-") as tmp:
        r = run(args.participants, args.width, args.rounds, Path(tmp))
    print(f"{'process':>12} {'idle RSS MB':>12} {'peak RSS MB':>12}")
    print(f"{'coordinator':>12} {r['coordinator_idle']:>12.0f} {r['coordinator_peak']:>12.0f}")
    print(f"{'agent (max)':>12} {r['agent_idle']:>12.0f} {r['agent_peak']:>12.0f}")


if __name__ == "__main__":
    main()
