"""Durability: a coordinator killed with SIGKILL mid-round resumes with what it acknowledged."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter

import pytest
import torch

from daemon_helpers import (
    STRATEGY,
    RawClient,
    Running,
    exit_code_after_sigterm,
    local_parts,
    make_consortium,
    simulate,
    start_agents,
    tiny_dataset,
)
from latentfl.config import write_config
from latentfl.platform.coordinator import Coordinator, StateStore, read_journal, verify_journal
from latentfl.platform.local import LocalConsortium
from latentfl.platform.participant import Agent
from latentfl.platform.protocol import Kind, pack_json
from latentfl.platform.supervisor import wait_until
from latentfl.strategies import build_strategy

IDS = ["p00", "p01", "p02"]


def _write_config(consortium: LocalConsortium, path) -> None:
    write_config(path, consortium.coordinator_config(heartbeat_timeout=60.0, round_deadline=120.0))


def _start(config_path, log_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "latentfl", "coordinator", "--config",
                             str(config_path)], stdout=log_path.open("ab"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _accepted_updates(journal):
    return [e for e in read_journal(journal)
            if e["event"] == "accepted" and e.get("kind") == "UPDATE"]


@pytest.mark.slow
def test_sigkilled_coordinator_resumes_without_losing_or_double_counting(tmp_path):
    """kill -9 after two ACKs of round 1; the restart finishes with the simulator's weights."""
    dataset = tiny_dataset()
    parts = local_parts(dataset, 3)
    consortium = make_consortium(tmp_path, IDS)
    config_path, log_path = tmp_path / "coordinator.toml", tmp_path / "coordinator.log"
    _write_config(consortium, config_path)
    journal = tmp_path / "state" / "journal.jsonl"
    proc = _start(config_path, log_path)
    agents, late = [], None
    try:
        wait_until(lambda: (tmp_path / "state" / "status.json").exists(), 60, "coordinator start")
        agents = start_agents(consortium, parts, IDS[:2])
        silent = RawClient(consortium, consortium.identity("p02"))
        silent.send(silent.frames(Kind.HELLO, 0, pack_json({"num_examples": 10})))
        assert silent.recv(timeout=30, kind=Kind.TASK) is not None
        wait_until(lambda: len(_accepted_updates(journal)) == 2, 60, "two acknowledged updates")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        silent.close()

        proc = _start(config_path, log_path)
        late = Running(Agent(consortium.participant_config("p02"), data=parts[2]))
        assert proc.wait(120) == 0, log_path.read_text()[-3000:]
        for agent in [*agents, late]:
            assert agent.join(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for agent in [*agents, *([late] if late else [])]:
            agent.stop()

    assert verify_journal(journal) > 0
    entries = read_journal(journal)
    assert [e["round"] for e in entries if e["event"] == "started"] == [1, 1]
    closed = [e for e in entries if e["event"] == "round_closed"]
    assert [e["accepted"] for e in closed] == [IDS, IDS]
    fresh = Counter((e["peer"], e["round"]) for e in _accepted_updates(journal)
                    if not e.get("resent"))
    assert all(n == 1 for n in fresh.values()) and len(fresh) == 6

    reference = simulate(dataset, 3, 2).strategy.global_weights()
    ckpt = StateStore(tmp_path / "state").load_checkpoint(2)
    for name, value in reference.items():
        assert torch.allclose(ckpt.tensors[f"global.{name}"], value, atol=1e-6, rtol=0), name


def test_sigterm_stops_the_coordinator_cleanly(tmp_path):
    """SIGTERM makes the daemon record its state, remove its pid file and exit with 130."""
    consortium = make_consortium(tmp_path, IDS)
    config_path, log_path = tmp_path / "coordinator.toml", tmp_path / "coordinator.log"
    _write_config(consortium, config_path)
    proc = _start(config_path, log_path)
    assert exit_code_after_sigterm(
        proc, lambda: (tmp_path / "state" / "status.json").exists(), "coordinator start") == 130
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["phase"] == "stopped"
    assert not (tmp_path / "state" / "coordinator.pid").exists()
    assert read_journal(tmp_path / "state" / "journal.jsonl")[-1]["event"] == "stopped"
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert {"coordinator_started", "coordinator_stopped"} <= {e["event"] for e in lines}


def test_sigterm_stops_a_lingering_coordinator_with_130(tmp_path):
    """A coordinator lingering after its last round (linger_s) exits 130 on SIGTERM, as the
    exit-code table says of a signal stop; 0 is for a linger that ran out."""
    consortium = make_consortium(tmp_path, IDS)
    config = consortium.coordinator_config(rounds=1, linger_s=120.0)
    strategy = build_strategy(config.strategy)
    strategy.initialize(0)
    tensors, meta = strategy.state_dict()
    StateStore(config.state_dir).save_checkpoint(1, tensors, {"round": 1, "strategy": meta})
    config_path, log_path = tmp_path / "coordinator.toml", tmp_path / "coordinator.log"
    write_config(config_path, config)
    proc = _start(config_path, log_path)
    assert exit_code_after_sigterm(
        proc, lambda: '"lingering"' in log_path.read_text(), "the coordinator to linger") == 130
    assert read_journal(tmp_path / "state" / "journal.jsonl")[-1]["phase"] == "finished"


@pytest.mark.slow
def test_killed_participant_process_does_not_stop_a_round_at_quorum(tmp_path):
    """A participant process SIGKILLed while training; the others' quorum closes the round."""
    dataset = tiny_dataset()
    consortium = make_consortium(tmp_path, IDS)
    local = {k: v for k, v in STRATEGY["local"].items() if k != "max_steps"}
    config = consortium.coordinator_config(rounds=1, quorum=0.6, heartbeat_timeout=60.0,
                                           strategy={**STRATEGY, "local": local})
    coord = Running(Coordinator(config))
    part = write_config(tmp_path / "p02.toml", consortium.participant_config(
        "p02", heartbeat_interval=5.0, coordinator_timeout=30.0))  # all 5000 images: it trains
    proc = subprocess.Popen([sys.executable, "-m", "latentfl", "participant", "--config",
                             str(part)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    agents = []
    try:
        wait_until(lambda: "p02" in coord.daemon.online(), 60, "p02 online")
        agents = start_agents(consortium, local_parts(dataset, 3), IDS[:2])
        wait_until(lambda: "p02" in coord.daemon.rounds.plan, 30, "round 1 planned with p02")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert coord.join(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for agent in agents:
            agent.stop()
        coord.stop()
    closed = [e for e in read_journal(config.state_dir / "journal.jsonl")
              if e["event"] == "round_closed"]
    assert closed[0]["accepted"] == ["p00", "p01"]


def test_sigterm_stops_a_participant_cleanly(tmp_path):
    """A participant waiting for an absent coordinator exits with 130 on SIGTERM."""
    consortium = make_consortium(tmp_path, IDS)
    part = write_config(tmp_path / "p00.toml", consortium.participant_config("p00"))
    log = tmp_path / "p00.log"
    proc = subprocess.Popen([sys.executable, "-m", "latentfl", "participant", "--config",
                             str(part)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    assert exit_code_after_sigterm(
        proc, lambda: "participant_started" in log.read_text(), "agent start") == 130
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()
              if line.startswith("{")]
    assert events[0] == "participant_started" and events[-1] == "participant_stopped"
