"""Shared set-up for the daemon tests: the package's LocalConsortium with quick settings, tiny
data, daemons run in threads, and a raw client that can tamper with any field."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import torch
import zmq

from latentfl.config import from_dict
from latentfl.data import PartitionConfig, load_dataset, to_tensors
from latentfl.platform.coordinator import Coordinator, StateStore, read_journal
from latentfl.platform.crypto import Identity, load_roster, make_curve_client
from latentfl.platform.local import LocalConsortium
from latentfl.platform.participant import Agent, LocalData
from latentfl.platform.protocol import Kind, Message, ReplayGuard, Verifier, encode
from latentfl.platform.supervisor import wait_until
from latentfl.simulate import SimulationConfig, run_simulation

SESSION = "test-session"
STRATEGY = {
    "method": "fedavg",
    "model": {"name": "convnet", "options": {"width": 8, "depth": 1}},
    "local": {"epochs": 1, "batch_size": 32, "lr": 0.05, "max_steps": 4},
}
PARTITION = PartitionConfig(scheme="dirichlet", alpha=0.5, seed=0, min_size=10)
#: A FedDGM small enough for a daemon test on CPU (random prior, a few iterations).
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TINY_FEDDGM = {
    "method": "feddgm",
    "model": {"name": "convnet", "options": {"width": 8, "depth": 1}},
    "local": {"epochs": 1, "batch_size": 32, "lr": 0.05, "max_steps": 3},
    "feddgm": {
        "ipc": 1, "mean": list(MEAN), "std": list(STD), "device": "cpu",
        "global_model": {"name": "convnet", "options": {"width": 8, "depth": 1}},
        "distill": {"iterations": 2, "steps": 2, "batch_size": 10, "prior": "random",
                    "log_every": 0},
        "global_train": {"epochs": 1, "batch_size": 32, "lr": 0.01},
        "surrogate_train": {"epochs": 1, "batch_size": 32, "lr": 0.01},
    },
}


def tiny_dataset(n_train: int = 400, n_test: int = 100):
    """The first images of the built-in set (both splits), with the full set's statistics."""
    ds = load_dataset("builtin:cifar10-mini")
    g = torch.Generator().manual_seed(0)
    train_idx = torch.randperm(len(ds.train), generator=g)[:n_train].numpy()
    return dataclasses.replace(ds, train=ds.train.subset(train_idx),
                               test=ds.test.subset(range(n_test)))


def local_parts(ds, count: int) -> list[LocalData]:
    """Each participant's part of the partition, computed as the simulator computes it."""
    parts = PARTITION.split(ds.train.y, count)
    x, y = to_tensors(ds.train, ds.mean, ds.std)
    return [LocalData.of_tensors(x[idx], y[idx], ds.num_classes) for idx in parts]


def simulate(ds, count: int, rounds: int):
    """The in-process reference run for the same strategy, data and seeds."""
    cfg = from_dict(SimulationConfig, {
        "participants": count, "rounds": rounds, "seed": 0, "device": "cpu",
        "partition": dataclasses.asdict(PARTITION), "strategy": STRATEGY})
    return run_simulation(cfg, dataset=ds)


#: The daemon tests' settings, laid over LocalConsortium's: tiny FedAvg, quick timeouts.
COORDINATOR = {
    "rounds": 2, "min_participants": 3, "round_deadline": 60.0, "heartbeat_timeout": 10.0,
    "roster_poll": 0.2, "device": "cpu", "strategy": STRATEGY,
}
PARTICIPANT = {
    "heartbeat_interval": 0.5, "ack_timeout": 3.0, "coordinator_timeout": 5.0, "max_backoff": 1.0,
}


def checkpoint_global(state_dir: Path, round: int) -> dict[str, torch.Tensor]:
    """The global model's weights in the coordinator's checkpoint of ``round``."""
    tensors = StateStore(state_dir).load_checkpoint(round).tensors
    return {k.removeprefix("global."): v for k, v in tensors.items() if k.startswith("global.")}


def make_consortium(root: Path, ids: list[str]) -> LocalConsortium:
    """Real keys and roster under ``root``, configs with the daemon tests' settings."""
    return LocalConsortium(root, ids, session=SESSION, coordinator=COORDINATOR,
                           participant=PARTICIPANT)


class Running:
    """A daemon (Coordinator or Agent) running in a thread."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.code: int | None = None
        self.error: BaseException | None = None
        ready = threading.Event()
        kwargs = {"ready": ready} if isinstance(daemon, Coordinator) else {}

        def target():
            try:
                self.code = daemon.run(handle_signals=False, **kwargs)
            except BaseException as exc:  # surfaced by join()
                self.error = exc
                ready.set()

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        if kwargs:
            assert ready.wait(30), "coordinator did not start"

    def join(self, timeout: float) -> int | None:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.code

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(15)


def start_agents(consortium: LocalConsortium, parts: list[LocalData], ids: list[str]) -> list[Running]:
    return [Running(Agent(consortium.participant_config(pid), data=parts[i]))
            for i, pid in enumerate(ids)]


class RawClient:
    """A hand-driven participant: real CURVE keys and protocol encode, any field tampered."""

    def __init__(self, consortium: LocalConsortium, identity: Identity, *, session: str = SESSION):
        self.identity = identity
        self.session = session
        roster = load_roster(consortium.roster)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        make_curve_client(self.sock, identity, roster.coordinator_curve_public)
        self.sock.connect(consortium.endpoint)
        self.verifier = Verifier.of_coordinator(roster, session=SESSION,
                                                replay=ReplayGuard(window_s=300.0))

    def frames(self, kind: Kind, round: int, payload: bytes = b"", meta=None,
               signing_key=None) -> list[bytes]:
        return encode(kind, session=self.session, round=round, sender=self.identity.id,
                      signing_key=signing_key or self.identity.signing_key, payload=payload,
                      meta=meta)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout: float = 5.0, kind: Kind | None = None) -> Message | None:
        """The next verified message (of ``kind`` if given), or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000)):
                return None
            msg = self.verifier.verify(self.sock.recv_multipart(), user_id="coordinator")
            if kind is None or msg.header.kind is kind:
                return msg
        return None

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def exit_code_after_sigterm(proc: subprocess.Popen, ready, what: str) -> int:
    """Wait until ``ready()``, send SIGTERM and return the exit code; the process never
    outlives the call (it is killed if it did not exit)."""
    try:
        wait_until(ready, 60, what)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def processes_mentioning(text: str) -> list[int]:
    """Pids (other than this one) whose command line contains ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


def events_after_abandonment(threads: list[threading.Thread], coord: Running,
                             journal: Path) -> list[str]:
    """Run the raw clients' ``threads``, wait for the round to be abandoned, stop the
    coordinator; the journal's event names."""
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    wait_until(lambda: any(e["event"] == "round_abandoned" for e in read_journal(journal)), 30,
               "abandonment")
    coord.stop()
    return [e["event"] for e in read_journal(journal)]


def run_to_the_end(coord: Running, agents: list[Running], journal: Path,
                   timeout: float) -> list[dict]:
    """Wait for the coordinator to finish its session (exit 0) within ``timeout``; stop
    everything whatever happened; the journal's entries."""
    try:
        assert coord.join(timeout) == 0
    finally:
        [a.stop() for a in agents]
        coord.stop()
    return read_journal(journal)
