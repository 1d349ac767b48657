"""Quorums: one that can never be met is refused at start, before any state is written; a
round below min_updates is never aggregated."""

from __future__ import annotations

from daemon_helpers import RawClient, Running, make_consortium
from latentfl.cli import main
from latentfl.config import write_config
from latentfl.exitcodes import ExitCode
from latentfl.platform.coordinator import Coordinator, read_journal
from latentfl.platform.crypto import revoke_participant
from latentfl.platform.protocol import Kind, pack_json, unpack_tensors
from latentfl.platform.supervisor import wait_until
from latentfl.platform.wire.payloads import encode_update
from latentfl.strategies import Update


def test_impossible_quorum_is_refused_at_start(tmp_path, capsys):
    """`latentfl coordinator` with min_participants 5 and 2 enrolled exits 2 with one sentence
    naming the key, the roster and the most it may be, and creates no state folder."""
    consortium = make_consortium(tmp_path, ["p00", "p01"])
    config = consortium.coordinator_config(min_participants=5)
    path = write_config(tmp_path / "coordinator.toml", config)
    assert main(["coordinator", "--config", str(path)]) == ExitCode.USER_ERROR
    err = capsys.readouterr().err
    assert "min_participants = 5" in err and "enrols 2 participant(s)" in err
    assert "expected at most 2" in err and err.count("\n") == 1
    assert not config.state_dir.exists()


def _tasks(clients: list[RawClient]) -> list:
    """Each client says HELLO; the TASKs of the round that opens for them."""
    for client in clients:
        client.send(client.frames(Kind.HELLO, 0, pack_json({"num_examples": 50})))
    tasks = [client.recv(kind=Kind.TASK, timeout=30.0) for client in clients]
    assert all(task is not None for task in tasks)
    return tasks


def test_plain_round_below_min_updates_after_a_revoke_is_not_aggregated(tmp_path):
    """Plain FedAvg with min_updates 2: one of the round's two sites is revoked, the other
    delivers; the single update never becomes the global model (no round closes, the round is
    abandoned at its deadline)."""
    consortium = make_consortium(tmp_path, ["p00", "p01"])
    config = consortium.coordinator_config(min_participants=2, min_updates=2, rounds=1,
                                           round_deadline=6.0)
    coord = Running(Coordinator(config))
    clients = [RawClient(consortium, consortium.identity(pid)) for pid in ("p00", "p01")]
    journal = config.state_dir / "journal.jsonl"
    try:
        task, _ = _tasks(clients)
        revoke_participant(consortium.keys, "p01")
        wait_until(lambda: any(e["event"] == "roster_reloaded" for e in read_journal(journal)),
                   30, "the revocation")
        update = Update("p00", 1, unpack_tensors(task.payload), num_examples=50, num_steps=1)
        clients[0].send(clients[0].frames(Kind.UPDATE, 1, *encode_update(update)))
        assert clients[0].recv(kind=Kind.ACK, timeout=30.0) is not None
        wait_until(lambda: any(e["event"] == "round_abandoned" for e in read_journal(journal)),
                   60, "the round to be abandoned at its deadline")
        assert coord.daemon.rounds.history == [] and coord.daemon.rounds.round == 1
    finally:
        for client in clients:
            client.close()
        coord.stop()
    assert not any(e["event"] == "round_closed" for e in read_journal(journal))
