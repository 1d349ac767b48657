"""The coordinator's record: no half-accepted update, a lost journal noticed at start and by
``latentfl status``, temp files of a crash cleaned, start-up problems told in one sentence."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from daemon_helpers import RawClient, Running, make_consortium
from latentfl.config import write_config
from latentfl.errors import AddressInUseError, StateError, StateFolderError
from latentfl.exitcodes import ExitCode
from latentfl.platform.coordinator import (
    Coordinator,
    read_journal,
    verify_against_checkpoint,
)
from latentfl.platform.protocol import Kind, pack_json, unpack_tensors
from latentfl.platform.wire.payloads import encode_update
from latentfl.strategies import Update


@pytest.fixture
def consortium(tmp_path):
    return make_consortium(tmp_path, ["p00", "p01"])


def _update(client, weights, steps=2):
    payload, meta = encode_update(Update("p00", 1, weights, num_examples=50, num_steps=steps))
    return client.frames(Kind.UPDATE, 1, payload, meta)


def _one_round(consortium, monkeypatch=None):
    """Run a one-round session to its checkpoint; with ``monkeypatch``, the first journal fsync
    after the update file is written fails once, as a disk would. Returns the config."""
    config = consortium.coordinator_config(min_participants=1, rounds=1)
    daemon = Coordinator(config)
    coord = Running(daemon)
    client = RawClient(consortium, consortium.identity("p00"))
    try:
        client.send(client.frames(Kind.HELLO, 0, pack_json({"num_examples": 50})))
        weights = unpack_tensors(client.recv(kind=Kind.TASK).payload)
        if monkeypatch is not None:
            real_fsync, failed = os.fsync, []

            def fsync(fd):
                if fd == daemon.journal._fd and not failed:
                    failed.append(fd)
                    raise OSError(5, "Input/output error")
                real_fsync(fd)

            monkeypatch.setattr(os, "fsync", fsync)
            client.send(_update(client, weights))
            reject = client.recv(kind=Kind.REJECT)
            assert reject is not None and reject.header.meta["reason"] == "internal"
            assert daemon.rounds.updates == {} and daemon.rounds.phase == "collecting"
            assert not list(config.state_dir.glob("rounds/*/updates/*.safetensors"))
            monkeypatch.setattr(os, "fsync", real_fsync)
        client.send(_update(client, weights, steps=3))
        assert client.recv(kind=Kind.ACK) is not None
        assert coord.join(30) == ExitCode.OK
    finally:
        client.close()
        coord.stop()
    return config


def test_a_failed_journal_write_leaves_no_accepted_update(consortium, monkeypatch):
    """When the journal line of an update cannot be made durable, the update is refused
    ('internal'), its file removed, nothing counted; the next one is accepted normally."""
    config = _one_round(consortium, monkeypatch)
    entries = read_journal(config.state_dir / "journal.jsonl")
    accepted = [e for e in entries if e["event"] == "accepted" and e["kind"] == "UPDATE"]
    refused = [e for e in entries if e["event"] == "refused"]
    assert len(accepted) == 1 and [e["reason"] for e in refused] == ["internal"]
    assert verify_against_checkpoint(config.state_dir / "journal.jsonl", config.state_dir) > 0


@pytest.mark.parametrize("damage", ["deleted", "emptied", "truncated"])
def test_a_lost_journal_is_detected_at_start_and_by_status(consortium, damage, tmp_path):
    """After a checkpoint, a deleted, emptied or truncated journal stops the coordinator's
    start and fails ``latentfl status``; --accept-journal-loss starts anyway and says so."""
    config = _one_round(consortium)
    journal = config.state_dir / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    if damage == "deleted":
        journal.unlink()
    else:
        journal.write_bytes(b"" if damage == "emptied" else b"".join(lines[: len(lines) // 2]))
    with pytest.raises(StateError, match="deleted or truncated"):
        Coordinator(config)
    path = write_config(tmp_path / "coordinator.toml", config)
    status = subprocess.run([sys.executable, "-m", "latentfl", "status", "--config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == ExitCode.STATE and "deleted or truncated" in status.stderr
    daemon = Coordinator(config, accept_journal_loss=True)
    daemon.store.unlock()
    daemon.journal.close()
    first = read_journal(journal)[0]
    assert first["event"] == "journal_loss_accepted" and "deleted or truncated" in first["detail"]
    verify_against_checkpoint(journal, config.state_dir)  # re-anchored: the next start is clean


def test_orphan_temp_files_are_removed_at_start(consortium):
    """Temp files a kill -9 left mid-write are deleted when the coordinator starts."""
    config = consortium.coordinator_config()
    orphan = config.state_dir / "checkpoints" / ".round-000001.json.k3j2.tmp"
    orphan.parent.mkdir(parents=True)
    orphan.write_text("{")
    daemon = Coordinator(config)
    daemon.store.unlock()
    daemon.journal.close()
    assert not orphan.exists()
    assert read_journal(config.state_dir / "journal.jsonl")[-1]["count"] == 1


def test_port_in_use_is_one_sentence_and_leaves_no_state_folder(consortium):
    """A bind address another process holds ends the start with AddressInUseError (exit 5),
    and the state folder this start created (lock, journal) is gone again."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        config = consortium.coordinator_config(bind=f"tcp://127.0.0.1:{port}")
        assert not config.state_dir.exists()
        daemon = Coordinator(config)
        with pytest.raises(AddressInUseError, match=f"127.0.0.1:{port} is in use"):
            daemon.run(handle_signals=False)
        assert not config.state_dir.exists()
    finally:
        holder.close()


def test_a_second_coordinator_on_one_state_folder_is_a_busy_folder_not_corruption(consortium):
    """A second coordinator on a state folder another one holds is refused with
    StateFolderError (exit 6, the folder is busy), never StateError (exit 4, corrupt)."""
    config = consortium.coordinator_config()
    first = Coordinator(config)
    try:
        with pytest.raises(StateFolderError, match="in use by another coordinator"):
            Coordinator(config)
    finally:
        first.store.unlock()
        first.journal.close()
        first.replay.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes any folder")
def test_unwritable_state_folder_is_one_sentence(consortium, tmp_path):
    """A state folder this user cannot write ends the start with StateFolderError (exit 6)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(StateFolderError, match="cannot"):
            Coordinator(consortium.coordinator_config(state_dir=locked / "state"))
    finally:
        locked.chmod(0o700)


def test_every_exit_code_is_documented():
    """Each exit code has a help sentence and a line in docs/deployment.md."""
    from pathlib import Path

    from latentfl.exitcodes import HELP
    doc = (Path(__file__).parent.parent / "docs" / "deployment.md").read_text()
    for code in ExitCode:
        assert HELP[code] and f"| {int(code)} " in doc, code
