"""The coordinator's ``[distributed]`` section: each round's distillation on a torchrun group.

With the section, the daemon gives the strategy a :class:`WorkerGroup` as its distiller
(:class:`~latentfl.strategies.UsesDistiller`). For each round it writes the round's
:class:`~latentfl.distill.jobs.DistillRequest` to ``STATE_DIR/distill/attempt-N/`` and starts
``torchrun ... -m latentfl.distill.group_worker`` as node 0 (global ranks ``0 .. K-1`` on this
host, rank 0 beside the daemon). Rank 0 reads the request and sends it to the other ranks over
the process group, so other nodes need no shared filesystem; they run the same torchrun command
with their own ``--node-rank`` (docs/deployment.md).

An attempt fails when the group exits non-zero (a rank died, the rendezvous or a collective
timed out) or leaves no sets; each failure is one journal line ``distill_group_failed`` with the
attempt, the reason and the group's log file. The group is tried twice; after two failures the
round is distilled here (``distill_fallback_local``), from the same accepted updates, so a round
never loses one. The daemon journals these lines from its own thread: :class:`WorkerGroup`
only hands them to ``note``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from latentfl.config import option
from latentfl.distill import SyntheticSet
from latentfl.distill.jobs import (
    REQUEST_FILE,
    SETS_FILE,
    DistillRequest,
    read_sets,
    run_request,
    write_request,
)
from latentfl.errors import StateError
from latentfl.log import get_logger
from latentfl.torchrun import torchrun_command

__all__ = ["ATTEMPTS", "DistributedConfig", "WorkerGroup"]

#: Tries of the worker group per round before distilling locally (the first and one retry).
ATTEMPTS = 2


@dataclass(frozen=True)
class DistributedConfig:
    """Distil each round on a torchrun worker group (the ``[distributed]`` section)."""

    ranks_per_node: int = option(2, help="Ranks torchrun starts on each node (one per GPU; on "
                                         "CPUs, about one per core).", min=1)
    nodes: int = option(1, help="Nodes in the group; this host is node 0, the others run the "
                                "worker command of docs/deployment.md.", min=1)
    endpoint: str = option("127.0.0.1:29500", help="HOST:PORT of the rendezvous node 0 hosts "
                                                   "(torchrun's master address); other nodes "
                                                   "connect to it, so open the port to them.")
    backend: Literal["auto", "gloo", "nccl"] = option(
        "auto", help="Process-group backend: nccl on GPUs, gloo on CPUs; auto picks nccl when "
                     "this host has CUDA.")
    rendezvous_timeout: float = option(120.0, help="Seconds the nodes may take to meet before "
                                                   "the attempt fails.", min=1.0)
    collective_timeout: float = option(3600.0, help="Seconds a rank waits for another inside "
                                                    "the group (longer than a rank's share of a "
                                                    "round) before the attempt fails.", min=1.0)

    @property
    def host(self) -> str:
        return self.endpoint.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.endpoint.rpartition(":")[2])

    def problems(self) -> list[str]:
        host, _, port = self.endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            return [f"distributed.endpoint = {self.endpoint!r}; expected HOST:PORT with a port "
                    "in 1..65535, e.g. '10.0.0.1:29500'."]
        return []


class WorkerGroup:
    """A :data:`~latentfl.distill.jobs.Distiller` that runs a round on a torchrun group, with
    one retry and a local fallback (see the module docstring)."""

    def __init__(self, config: DistributedConfig, workdir: Path,
                 note: Callable[..., None]) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.note = note
        self.log = get_logger("coordinator.distill_group")
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Stop the running group (torchrun stops its ranks) and start no other (thread-safe):
        the daemon is exiting, and the round resumes from the state folder at the next start."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    @property
    def backend(self) -> str:
        if self.config.backend != "auto":
            return self.config.backend
        return "nccl" if torch.cuda.is_available() else "gloo"

    def __call__(self, request: DistillRequest, device: torch.device) -> list[SyntheticSet]:
        count = sum(len(job.classes) for job in request.jobs)
        for attempt in range(1, ATTEMPTS + 1):
            started = time.perf_counter()
            try:
                sets = self._attempt(request, attempt, count)
            except _GroupFailed as exc:
                if self._stopping.is_set():
                    raise StateError("the coordinator stopped while the worker group distilled; "
                                     "the round resumes at the next start.") from None
                self.note("distill_group_failed", attempt=attempt, reason=exc.reason,
                          log=str(exc.log))
                self.log.warning("distill_group_failed", attempt=attempt, reason=exc.reason)
                continue
            seconds = round(time.perf_counter() - started, 3)
            self.note("distill_group_done", attempt=attempt, participants=count,
                      ranks=self.config.nodes * self.config.ranks_per_node, seconds=seconds)
            return sets
        self.note("distill_fallback_local", attempts=ATTEMPTS, participants=count)
        self.log.warning("distill_fallback_local", attempts=ATTEMPTS)
        return run_request(request, device)

    def _attempt(self, request: DistillRequest, attempt: int, count: int) -> list[SyntheticSet]:
        job = self.workdir / f"attempt-{attempt}"
        shutil.rmtree(job, ignore_errors=True)
        job.mkdir(parents=True)
        write_request(job / REQUEST_FILE, request)
        cfg = self.config
        command = torchrun_command(
            "latentfl.distill.group_worker",
            ["--job", str(job), "--backend", self.backend,
             "--timeout", str(cfg.collective_timeout)],
            nproc_per_node=cfg.ranks_per_node, nnodes=cfg.nodes, node_rank=0,
            master_addr=cfg.host, master_port=cfg.port, rendezvous_timeout=cfg.rendezvous_timeout)
        env = dict(os.environ)
        if self.backend == "gloo":
            env.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank: ranks ~ cores
        log_path = job / "group.log"
        with log_path.open("wb") as log:
            self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            if self._stopping.is_set():  # stop() came before the group existed
                self._proc.terminate()
            status = self._proc.wait()
        if status != 0:
            raise _GroupFailed(f"the worker group exited with status {status}: "
                              f"{_cause(log_path)}", log_path)
        if not (job / SETS_FILE).is_file():
            raise _GroupFailed("the worker group exited without writing the synthetic sets",
                              log_path)
        return read_sets(job / SETS_FILE, count)


class _GroupFailed(Exception):
    """One attempt of the worker group failed; ``reason`` says how, ``log`` holds its output."""

    def __init__(self, reason: str, log: Path) -> None:
        super().__init__(reason)
        self.reason, self.log = reason, log


#: What to look for in torchrun's output when it names no root cause, most telling first.
_CAUSES = ("timed out", "timeout", "connection refused", "error")


def _cause(log_path: Path) -> str:
    """The most telling part of torchrun's output: the rank that failed first and how (its
    'Root Cause' block), else the first line naming a timeout or an error."""
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    if "Root Cause (first observed failure):" in lines:
        block = lines[lines.index("Root Cause (first observed failure):") + 1:]
        fields = dict(ln.split(":", 1) for ln in block[:8] if ":" in ln)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "rank" in fields and "exitcode" in fields:
            return (f"rank {fields['rank']} on {fields.get('host', '?')} failed first, exit "
                    f"code {fields['exitcode']}")
    for needle in _CAUSES:
        for line in lines:
            if needle in line.lower():
                return line[-300:]
    return lines[-1][-300:] if lines else "no output"
