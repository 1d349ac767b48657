"""Remote admin over the coordinator's real CURVE endpoint: an operator's signed commands work
and are journaled; participants' keys, forged and unsigned commands are refused."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import pytest
from structlog.testing import capture_logs

from daemon_helpers import COORDINATOR, PARTICIPANT, SESSION, RawClient, Running
from latentfl.cli import main
from latentfl.config import write_config
from latentfl.errors import ProtocolError, SecurityError
from latentfl.platform.admin_client import AdminClient
from latentfl.platform.coordinator import (
    Coordinator,
    StateStore,
    collect_status,
    read_journal,
    render_text,
    verify_journal,
)
from latentfl.platform.crypto import load_identity, load_roster, revoke_participant
from latentfl.platform.local import LocalConsortium
from latentfl.platform.protocol import (
    TO_OPERATOR,
    Kind,
    Reject,
    ReplayGuard,
    Verifier,
    pack_json,
    unpack_tensors,
)
from latentfl.platform.supervisor import wait_until
from latentfl.platform.wire.payloads import encode_update
from latentfl.strategies import Update

IDS = ["p00", "p01", "p02"]
OPERATOR = "ops"


@pytest.fixture
def consortium(tmp_path):
    return LocalConsortium(tmp_path, IDS, session=SESSION, operators=[OPERATOR],
                           coordinator={**COORDINATOR, "rounds": 3, "min_participants": 2},
                           participant=PARTICIPANT)


@pytest.fixture
def stack():
    with ExitStack() as stack:
        yield stack


def _coordinator(consortium, stack) -> Running:
    coord = Running(Coordinator(consortium.coordinator_config()))
    stack.callback(coord.stop)
    return coord


def _client(consortium, stack, pid: str) -> RawClient:
    identity = load_identity(consortium.keys / ("operators" if pid == OPERATOR else
                                                "participants") / pid)
    client = RawClient(consortium, identity)
    stack.callback(client.close)
    if pid == OPERATOR:  # the coordinator answers an operator with other kinds
        client.verifier = Verifier.of_coordinator(load_roster(consortium.roster),
                                                  accepts=TO_OPERATOR, session=SESSION,
                                                  replay=ReplayGuard(window_s=300.0))
    return client


def _admin(consortium, stack) -> AdminClient:
    return stack.enter_context(AdminClient(consortium.admin_config(OPERATOR, timeout_s=10.0)))


def _join(clients) -> list:
    """Each participant says HELLO; their TASKs (None where none came within a second)."""
    for client in clients:
        client.send(client.frames(Kind.HELLO, 0, pack_json({"num_examples": 50})))
    return [client.recv(kind=Kind.TASK, timeout=1.5) for client in clients]


def _deliver(client, task) -> dict:
    """Send back the task's weights as the update; the coordinator's ACK."""
    update = Update(client.identity.id, task.header.round, unpack_tensors(task.payload),
                    num_examples=50, num_steps=1)
    payload, meta = encode_update(update)
    client.send(client.frames(Kind.UPDATE, task.header.round, payload, meta))
    ack = client.recv(kind=Kind.ACK)
    assert ack is not None
    return ack.header.meta


def _events(consortium, name: str) -> list[dict]:
    return [e for e in read_journal(consortium.state_dir / "journal.jsonl") if e["event"] == name]


def test_pause_resume_abort_status_and_journal_for_the_operator(consortium, stack, capsys):
    """Paused, no round opens; resumed, it does; abort-round skips it keeping its accepted
    update on record; status and the journal tail answer; each command is journaled."""
    coord = _coordinator(consortium, stack)
    admin = _admin(consortium, stack)
    assert admin.status()["phase"] == "waiting"
    assert admin.pause() == {"paused": True, "removed": [], "changed": True}
    p00, p01 = (_client(consortium, stack, pid) for pid in IDS[:2])
    assert _join([p00, p01]) == [None, None]  # online, but paused: no round opens
    assert coord.daemon.rounds.phase == "waiting"
    assert admin.resume()["changed"] is True
    tasks = [p00.recv(kind=Kind.TASK), p01.recv(kind=Kind.TASK)]
    assert [t.header.round for t in tasks] == [1, 1]
    digest = _deliver(p00, tasks[0])["sha256"]

    result = admin.abort_round()
    assert result == {"aborted": 1, "accepted": ["p00"], "next_round": 2}
    kept = StateStore(consortium.state_dir).round_dir(1) / "updates" / "p00.safetensors"
    assert kept.exists()
    history = StateStore(consortium.state_dir).load_checkpoint(1).meta["history"]
    assert history[-1]["aborted"] is True and history[-1]["accepted"] == ["p00"]
    assert [t.header.round for t in (p00.recv(kind=Kind.TASK), p01.recv(kind=Kind.TASK))] == [2, 2]
    with pytest.raises(ProtocolError) as refused:  # round 1 is over: aborting it again is refused
        admin.abort_round(1)
    assert refused.value.reason == "bad-command"

    entries = admin.journal(4)
    on_disk = read_journal(consortium.state_dir / "journal.jsonl")
    assert [e["seq"] for e in entries] == [e["seq"] for e in on_disk[-4:]]
    cfg = write_config(consortium.root / "admin.toml", consortium.admin_config(OPERATOR))
    capsys.readouterr()  # the daemon thread's log lines so far
    assert main(["admin", "--config", str(cfg), "--json", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["round_in_progress"]["round"] == 2 and status["phase"] == "collecting"
    assert [h["round"] for h in status["history"]] == [1]  # the aborted round, on record
    assert status["admin"] == {"paused": False, "removed": []}
    assert OPERATOR not in status["participants"]  # an operator is never a participant

    coord.stop()
    assert verify_journal(consortium.state_dir / "journal.jsonl") > 0
    aborted = _events(consortium, "round_aborted")
    assert aborted == [{**aborted[0], "round": 1, "accepted": {"p00": digest}, "peer": OPERATOR,
                        "kind": "ADMIN_ABORT_ROUND", "participants": ["p00", "p01"]}]
    assert [e["peer"] for e in _events(consortium, "paused") + _events(consortium, "resumed")] \
        == [OPERATOR, OPERATOR]
    reads = [e["kind"] for e in _events(consortium, "accepted") if e.get("peer") == OPERATOR]
    assert reads == ["ADMIN_STATUS", "ADMIN_STATUS", "ADMIN_JOURNAL", "ADMIN_STATUS"]
    assert [e["reason"] for e in _events(consortium, "refused")] == ["bad-command"]


def test_remove_applies_from_the_next_round_without_dropping_connections(consortium, stack,
                                                                          capsys):
    """A removed participant leaves the round in progress and gets no later task, while nobody's
    connection is dropped; the removal survives a restart and can be undone."""
    coord = _coordinator(consortium, stack)
    admin = _admin(consortium, stack)
    admin.pause()  # so that round 1 opens with all three
    clients = [_client(consortium, stack, pid) for pid in IDS]
    _join(clients)
    socket = coord.daemon.router.socket
    admin.resume()
    tasks = [c.recv(kind=Kind.TASK) for c in clients]
    assert all(t is not None and t.header.round == 1 for t in tasks)

    assert admin.remove("p02") == {"paused": False, "removed": ["p02"], "changed": True,
                                   "left_round": True, "stalled": None}
    for client, task in zip(clients[:2], tasks[:2], strict=True):
        _deliver(client, task)  # the round closes on the two left in it
    removed = clients[2]  # its update, after the round closed: refused as removed, not late
    update = Update("p02", 1, unpack_tensors(tasks[2].payload), num_examples=50, num_steps=1)
    removed.send(removed.frames(Kind.UPDATE, 1, *encode_update(update)))
    reject = Reject.from_meta(removed.recv(kind=Kind.REJECT).header.meta)
    assert reject.reason == "not-in-round" and "removed from this session" in reject.detail
    assert [c.recv(kind=Kind.TASK).header.round for c in clients[:2]] == [2, 2]
    p02 = clients[2]
    assert p02.recv(kind=Kind.TASK, timeout=1.0) is None
    p02.send(p02.frames(Kind.HEARTBEAT, 1))  # still connected and answered
    assert p02.recv(kind=Kind.HEARTBEAT) is not None
    assert coord.daemon.router.socket is socket and not _events(consortium, "connections_dropped")
    assert coord.daemon.rounds.plan == ["p00", "p01"]
    cfg = write_config(consortium.root / "admin.toml", consortium.admin_config(OPERATOR))
    capsys.readouterr()
    assert main(["admin", "--config", str(cfg), "remove", "nobody"]) == 2
    assert "not an active participant" in capsys.readouterr().err

    coord.stop()
    restarted = Running(Coordinator(consortium.coordinator_config()))
    stack.callback(restarted.stop)
    assert restarted.daemon.admin.state() == {"paused": False, "removed": ["p02"]}
    assert json.loads((consortium.state_dir / "admin.json").read_text())["removed"] == ["p02"]
    assert admin.readmit("p02")["removed"] == []
    removed = _events(consortium, "participant_removed")
    assert [(e["participant"], e["peer"], e["left_round"]) for e in removed] == [
        ("p02", OPERATOR, 1)]
    assert _events(consortium, "participant_readmitted")[0]["participant"] == "p02"


def test_status_and_admin_say_paused_and_stalled(consortium, stack, capsys):
    """A paused session shows `paused` in status (not "waiting for participants"); removing
    participants until min_participants cannot be met warns the operator, journals why, and
    status shows `stalled: min_participants 2 cannot be met (1 eligible)`."""
    _coordinator(consortium, stack)
    admin = _admin(consortium, stack)
    admin.pause()
    _join([_client(consortium, stack, pid) for pid in IDS[:2]])
    status = collect_status(consortium.coordinator_config(), live=admin.status())
    assert status["phase"] == "paused"
    text = "\n".join(render_text(status))
    assert "phase   paused (by an operator" in text and "participants online" not in text
    admin.resume()
    cfg = write_config(consortium.root / "admin.toml", consortium.admin_config(OPERATOR))
    assert admin.remove("p02")["stalled"] is None
    capsys.readouterr()
    assert main(["admin", "--config", str(cfg), "remove", "p01"]) == 0
    out = capsys.readouterr().out
    assert ("WARNING: the run cannot proceed: min_participants 2 cannot be met (1 eligible)"
            in out)
    removed = _events(consortium, "participant_removed")
    assert removed[-1]["stalled"] == "min_participants 2 cannot be met (1 eligible)"
    status = collect_status(consortium.coordinator_config(), live=admin.status())
    assert status["phase"] == "stalled"
    assert status["stalled"] == "min_participants 2 cannot be met (1 eligible)"
    assert any("phase   stalled: min_participants 2 cannot be met (1 eligible)" in line
               for line in render_text(status))


def test_a_revocation_that_stalls_the_run_is_logged_once_and_shown(consortium, stack):
    """Revoking participants (no operator command) until min_participants 2 cannot be met
    logs `run_stalled` once, naming the cause, and status shows the stalled phase."""
    with capture_logs() as logs:
        coord = _coordinator(consortium, stack)
        revoke_participant(consortium.keys, "p01")
        wait_until(lambda: "p01" not in coord.daemon._auth.allowed_ids(), 10, "p01 revoked")
        revoke_participant(consortium.keys, "p02")
        config = consortium.coordinator_config()
        wait_until(lambda: collect_status(config, live=coord.daemon.status())["phase"]
                   == "stalled", 10, "the stalled phase")
        time.sleep(1.0)  # several roster polls later: still one line
    stalled = [e for e in logs if e["event"] == "run_stalled"]
    assert len(stalled) == 1, stalled
    assert stalled[0]["reason"] == "min_participants 2 cannot be met (1 eligible)"
    assert stalled[0]["summary"].startswith(
        "stalled: min_participants 2 cannot be met (1 eligible), after revoking p02;")
    status = collect_status(config, live=coord.daemon.status())
    assert status["stalled"] == "min_participants 2 cannot be met (1 eligible)"
    assert any("phase   stalled: min_participants 2 cannot be met (1 eligible)" in line
               for line in render_text(status))


def test_participant_keys_can_never_act_as_operator(consortium, stack):
    """An admin command signed by a participant is refused ('unexpected-kind') and journaled,
    and an operator may not send a participant's kinds."""
    coord = _coordinator(consortium, stack)
    participant = _client(consortium, stack, "p00")
    operator = _client(consortium, stack, OPERATOR)
    for kind in (Kind.ADMIN_PAUSE, Kind.ADMIN_REMOVE, Kind.ADMIN_JOURNAL):
        participant.send(participant.frames(kind, 0, meta={"participant": "p01"}))
        reject = participant.recv(kind=Kind.REJECT)
        assert reject.header.meta["reason"] == "unexpected-kind", kind
    for kind in (Kind.HELLO, Kind.UPDATE, Kind.FETCH_SYNTHETIC):
        operator.send(operator.frames(kind, 0, pack_json({"num_examples": 50})))
        assert operator.recv(kind=Kind.REJECT).header.meta["reason"] == "unexpected-kind", kind
    assert not coord.daemon.conductor.paused and not coord.daemon.admin.removed
    assert OPERATOR not in coord.daemon.peers
    with pytest.raises(SecurityError, match="not an active operator"):
        AdminClient(consortium.admin_config(OPERATOR, key_dir=consortium.keys / "participants" /
                                            "p00"))
    coord.stop()
    refused = [(e["peer"], e["kind"], e["reason"]) for e in _events(consortium, "refused")]
    assert refused == [("p00", "ADMIN_PAUSE", "unexpected-kind"),
                       ("p00", "ADMIN_REMOVE", "unexpected-kind"),
                       ("p00", "ADMIN_JOURNAL", "unexpected-kind"),
                       (OPERATOR, "HELLO", "unexpected-kind"),
                       (OPERATOR, "UPDATE", "unexpected-kind"),
                       (OPERATOR, "FETCH_SYNTHETIC", "unexpected-kind")]


def test_unsigned_or_forged_admin_commands_are_refused(consortium, stack):
    """On the operator's own connection, a command signed with another key, with a zeroed
    signature or without its signature frame is refused and journaled; nothing changes."""
    coord = _coordinator(consortium, stack)
    operator = _client(consortium, stack, OPERATOR)
    forged = operator.frames(Kind.ADMIN_PAUSE, 0,
                             signing_key=consortium.identity("p00").signing_key)
    zeroed = operator.frames(Kind.ADMIN_PAUSE, 0)
    zeroed[1] = bytes(64)
    for frames, reason in ((forged, "bad-signature"), (zeroed, "bad-signature")):
        operator.send(frames)
        assert operator.recv(kind=Kind.REJECT).header.meta["reason"] == reason
    unsigned = operator.frames(Kind.ADMIN_PAUSE, 0)
    operator.send([unsigned[0], unsigned[2]])
    assert operator.recv(kind=Kind.REJECT).header.meta["reason"] == "frames"
    operator.send(operator.frames(Kind.ADMIN_PAUSE, 0))  # the genuine one still works
    assert operator.recv(kind=Kind.ADMIN_RESULT) is not None
    assert coord.daemon.conductor.paused
    coord.stop()
    assert [e["reason"] for e in _events(consortium, "refused")] == [
        "bad-signature", "bad-signature", "frames"]
    assert len(_events(consortium, "paused")) == 1
