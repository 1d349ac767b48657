"""Coordinator and participant daemons over real loopback sockets with real CURVE keys."""

from __future__ import annotations

import io
import math
from contextlib import redirect_stdout

import pytest
import torch

from daemon_helpers import (
    RawClient,
    Running,
    local_parts,
    make_consortium,
    simulate,
    start_agents,
    tiny_dataset,
)
from latentfl.cli import main
from latentfl.config import write_config
from latentfl.platform.coordinator import Coordinator, read_journal, verify_journal
from latentfl.platform.crypto import init_consortium, load_identity, revoke_participant
from latentfl.platform.protocol import Kind, pack_json, unpack_tensors
from latentfl.platform.supervisor import wait_until
from latentfl.platform.wire.payloads import encode_update
from latentfl.strategies import Update

IDS = ["p00", "p01", "p02"]


@pytest.fixture(scope="module")
def dataset():
    return tiny_dataset()


@pytest.fixture
def consortium(tmp_path):
    return make_consortium(tmp_path, IDS + ["p03"])


def _final_global(state_dir, round):
    from latentfl.platform.coordinator import StateStore

    ckpt = StateStore(state_dir).load_checkpoint(round)
    return {k.removeprefix("global."): v for k, v in ckpt.tensors.items()}


def test_three_participants_finish_two_rounds_like_the_simulator(consortium, dataset, tmp_path):
    """3 agents finish 2 FedAvg rounds; final weights equal the simulator's within 1e-6."""
    config = consortium.coordinator_config(test_data="builtin:cifar10-mini", max_test=100)
    coord = Running(Coordinator(config))
    agents = start_agents(consortium, local_parts(dataset, 3), IDS)
    assert coord.join(90) == 0
    for agent in agents:
        assert agent.join(20) == 0
    journal = config.state_dir / "journal.jsonl"
    assert verify_journal(journal) > 0
    closed = [e for e in read_journal(journal) if e["event"] == "round_closed"]
    assert [e["accepted"] for e in closed] == [IDS, IDS]
    assert 0.0 <= closed[-1]["metrics"]["accuracy"] <= 1.0

    reference = simulate(dataset, 3, 2).strategy.global_weights()
    final = _final_global(config.state_dir, 2)
    assert set(final) == set(reference)
    for name, value in reference.items():
        assert torch.allclose(final[name], value, atol=1e-6, rtol=0), name

    cfg_file = write_config(tmp_path / "coordinator.toml", config)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", "--config", str(cfg_file)]) == 0
    text = out.getvalue()
    assert "finished" in text and "p02" in text and "hash chain verified" in text


def test_unenrolled_key_never_gets_a_task(consortium, tmp_path):
    """A CURVE key outside the roster is refused by ZAP: no TASK, no journal entry from it."""
    config = consortium.coordinator_config(min_participants=1)
    coord = Running(Coordinator(config))
    init_consortium(tmp_path / "other", ["p00"])
    stranger = RawClient(consortium, load_identity(tmp_path / "other" / "participants" / "p00"))
    try:
        stranger.send(stranger.frames(Kind.HELLO, 0, pack_json({"num_examples": 10})))
        assert stranger.recv(timeout=2.0) is None
        assert coord.daemon.rounds.phase == "waiting"
        assert not any(e.get("peer") == "p00" for e in read_journal(config.state_dir /
                                                                    "journal.jsonl"))
    finally:
        stranger.close()
        coord.stop()


def _update_frames(client, round, weights, kind=Kind.UPDATE, **changes):
    update = Update(client.identity.id, round, weights, num_examples=50, num_steps=2)
    payload, meta = encode_update(update)
    return client.frames(kind, round, payload, meta, **changes)


def test_hostile_messages_are_refused_with_reasons_and_service_continues(consortium):
    """Bad signature, wrong round, oversize, NaN, wrong shape, a kind only the coordinator
    sends, an encrypted kind in a plain session and replay are each refused."""
    config = consortium.coordinator_config(min_participants=1, rounds=2,
                                           max_message_bytes=2**20)
    coord = Running(Coordinator(config))
    client = RawClient(consortium, consortium.identity("p00"))
    try:
        client.send(client.frames(Kind.HELLO, 0, pack_json({"num_examples": 50})))
        task = client.recv(kind=Kind.TASK)
        assert task is not None and task.header.round == 1
        weights = unpack_tensors(task.payload)
        name = next(iter(weights))
        nan = {**weights, name: torch.full_like(weights[name], math.nan)}
        shape = {**weights, name: torch.zeros(3, 3)}
        cases = [
            ("bad-signature", _update_frames(client, 1, weights, signing_key=load_identity(
                consortium.keys / "participants" / "p01").signing_key)),
            ("wrong-round", _update_frames(client, 5, weights)),
            ("too-large", client.frames(Kind.UPDATE, 1, b"\0" * (2**20 + 10))),
            ("non-finite", _update_frames(client, 1, nan)),
            ("manifest", _update_frames(client, 1, shape)),
            ("wrong-session", _tamper_session(client)),
            ("unexpected-kind", client.frames(Kind.TASK, 1, b"")),
            ("wrong-mode", _update_frames(client, 1, weights, kind=Kind.ENCRYPTED_UPDATE)),
            ("wrong-mode", _update_frames(client, 1, weights, kind=Kind.AGGREGATE)),
        ]
        for reason, frames in cases:
            client.send(frames)
            reject = client.recv(kind=Kind.REJECT)
            assert reject is not None and reject.header.meta["reason"] == reason, reason
        good = _update_frames(client, 1, weights)
        client.send(good)
        ack = client.recv(kind=Kind.ACK)
        assert ack is not None and ack.header.meta["sha256"]
        client.send(good)  # the very same frames again
        reject = client.recv(kind=Kind.REJECT)
        assert reject is not None and reject.header.meta["reason"] == "replay"
        wait_until(lambda: coord.daemon.rounds.round == 2, 10, "the good update to close round 1")
    finally:
        client.close()
        coord.stop()
    entries = read_journal(config.state_dir / "journal.jsonl")
    reasons = [e["reason"] for e in entries if e["event"] == "refused"]
    assert reasons == [c[0] for c in cases] + ["replay"]
    closed = [e for e in entries if e["event"] == "round_closed"]
    assert closed[0]["accepted"] == ["p00"]


def _tamper_session(client):
    original = client.session
    client.session = "another-session"
    try:
        return client.frames(Kind.HEARTBEAT, 1)
    finally:
        client.session = original


def test_round_closes_at_quorum_when_a_participant_dies(consortium, dataset):
    """A participant that vanishes mid-round does not block a round whose quorum is met."""
    config = consortium.coordinator_config(rounds=1, quorum=0.6, heartbeat_timeout=60.0)
    coord = Running(Coordinator(config))
    doomed = RawClient(consortium, consortium.identity("p02"))
    doomed.send(doomed.frames(Kind.HELLO, 0, pack_json({"num_examples": 10})))
    agents = start_agents(consortium, local_parts(dataset, 3), IDS[:2])
    try:
        assert doomed.recv(kind=Kind.TASK) is not None
        doomed.close()  # gone without a word, like a killed process
        assert coord.join(60) == 0
    finally:
        for agent in agents:
            agent.stop()
    closed = [e for e in read_journal(config.state_dir / "journal.jsonl")
              if e["event"] == "round_closed"]
    assert closed[0]["accepted"] == ["p00", "p01"]


def test_revoked_participant_is_dropped(consortium, dataset):
    """Revoking a participant mid-round drops its connection and removes it from the round."""
    config = consortium.coordinator_config(rounds=2)  # round 2 cannot start without p02
    coord = Running(Coordinator(config))
    agents = start_agents(consortium, local_parts(dataset, 3), IDS[:2])
    revoked = RawClient(consortium, consortium.identity("p02"))
    revoked.send(revoked.frames(Kind.HELLO, 0, pack_json({"num_examples": 10})))
    try:
        assert revoked.recv(kind=Kind.TASK) is not None
        revoke_participant(consortium.keys, "p02")
        wait_until(lambda: "p02" not in coord.daemon.rounds.plan, 10, "p02 to leave the plan")
        # its connection is gone and cannot come back: the CURVE handshake now fails
        revoked.send(revoked.frames(Kind.HEARTBEAT, 1))
        assert revoked.recv(kind=Kind.REJECT, timeout=2.0) is None
        wait_until(lambda: coord.daemon.rounds.round == 2, 30, "round 1 to close")
    finally:
        revoked.close()
        for agent in agents:
            agent.stop()
        coord.stop()
    entries = read_journal(config.state_dir / "journal.jsonl")
    assert any(e["event"] == "roster_reloaded" and e["revoked"] == ["p02"] for e in entries)
    assert any(e["event"] == "connections_dropped" for e in entries)
    closed = [e for e in entries if e["event"] == "round_closed"]
    assert closed[0]["accepted"] == ["p00", "p01"]


def test_coordinator_refuses_to_start_with_foreign_keys(consortium, tmp_path):
    """A key folder that is not the roster's coordinator stops the daemon at start-up."""
    from latentfl.errors import SecurityError

    init_consortium(tmp_path / "other", ["p00"])
    with pytest.raises(SecurityError):
        Coordinator(consortium.coordinator_config(key_dir=str(tmp_path / "other" /
                                                              "coordinator")))


def test_declined_task_does_not_hold_the_round(consortium, dataset):
    """A participant that declines its TASK (DECLINE) leaves the round; the others' quorum closes
    it."""
    config = consortium.coordinator_config(rounds=1, min_participants=2)
    coord = Running(Coordinator(config))
    agents = start_agents(consortium, local_parts(dataset, 3), IDS[:1])
    refuser = RawClient(consortium, consortium.identity("p01"))
    try:
        refuser.send(refuser.frames(Kind.HELLO, 0, pack_json({"num_examples": 10})))
        task = refuser.recv(kind=Kind.TASK)
        assert task is not None
        refuser.send(refuser.frames(Kind.DECLINE, 1, meta={
            "reason": "budget_exceeded", "detail": "budget spent"}))
        assert coord.join(60) == 0
    finally:
        refuser.close()
        for agent in agents:
            agent.stop()
    entries = read_journal(config.state_dir / "journal.jsonl")
    assert any(e["event"] == "declined" and e["reason"] == "budget_exceeded" for e in entries)
    assert [e["accepted"] for e in entries if e["event"] == "round_closed"] == [["p00"]]


def test_silent_participant_is_marked_offline(consortium):
    """A participant that stops sending heartbeats is marked offline after heartbeat_timeout."""
    config = consortium.coordinator_config(heartbeat_timeout=0.5)
    coord = Running(Coordinator(config))
    client = RawClient(consortium, consortium.identity("p00"))
    try:
        client.send(client.frames(Kind.HELLO, 0, pack_json({"num_examples": 10})))
        wait_until(lambda: "p00" in coord.daemon.online(), 5, "p00 online")
        wait_until(lambda: "p00" not in coord.daemon.online(), 5, "p00 offline")
        client.send(client.frames(Kind.HEARTBEAT, 0))
        assert client.recv(kind=Kind.HEARTBEAT) is not None
        assert "p00" in coord.daemon.online()
    finally:
        client.close()
        coord.stop()


def test_second_coordinator_on_the_same_state_dir_is_refused(consortium):
    """Two daemons never share a state folder (the journal chain would fork)."""
    from latentfl.errors import StateError

    first = Coordinator(consortium.coordinator_config())
    with pytest.raises(StateError):
        Coordinator(consortium.coordinator_config())
    first.store.unlock()
