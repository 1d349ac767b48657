"""The coordinator's journal and durable store, without sockets."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save as st_save

from latentfl.errors import StateError
from latentfl.platform.coordinator.journal import Journal, read_journal, verify_journal
from latentfl.platform.coordinator.store import StateStore
from latentfl.platform.protocol import pack_tensors
from latentfl.strategies import Update


def test_journal_chain_verifies_and_survives_reopen(tmp_path):
    """Entries appended across two opens form one chain that verifies."""
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.append("accepted", peer="p00", round=1)
    j.append("refused", peer="p01", reason="bad-signature")
    j.close()
    j = Journal(path)
    j.append("accepted", peer="p02", round=1)
    j.close()
    assert verify_journal(path) == 3
    assert [e["seq"] for e in read_journal(path)] == [0, 1, 2]


def test_journal_sync_fsyncs_only_entries_no_durable_append_took_to_disk(tmp_path, monkeypatch):
    """Entries appended without fsync are fsynced by the next durable append or by sync();
    sync() with nothing left over does not fsync again."""
    fsyncs, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    j = Journal(tmp_path / "journal.jsonl")
    j.append("round_closed", round=1, durable=False)
    assert fsyncs == []
    j.sync()
    assert len(fsyncs) == 1
    j.sync()
    j.append("round_closed", round=2, durable=False)
    j.append("round_opened", round=3)  # fsyncs both
    j.sync()
    assert len(fsyncs) == 2
    j.close()
    assert [e["event"] for e in read_journal(tmp_path / "journal.jsonl")] == [
        "round_closed", "round_closed", "round_opened"]


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap"])
def test_journal_detects_tampering(tmp_path, tamper):
    """Editing, deleting or reordering a line breaks the hash chain."""
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    for i in range(4):
        j.append("accepted", peer=f"p{i:02d}", round=1)
    j.close()
    lines = path.read_text().splitlines()
    if tamper == "edit":
        entry = json.loads(lines[1])
        entry["peer"] = "mallory"
        lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    elif tamper == "delete":
        del lines[2]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StateError):
        verify_journal(path)


def test_journal_drops_a_torn_last_line(tmp_path):
    """A half-written last line (crash mid-append) is dropped on reopen; the chain continues."""
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.append("accepted", peer="p00")
    j.close()
    with path.open("ab") as fh:
        fh.write(b'{"seq":1,"prev":"ab')
    j = Journal(path)
    j.append("accepted", peer="p01")
    j.close()
    assert verify_journal(path) == 2


def test_store_checkpoint_plan_and_updates_round_trip(tmp_path):
    """Checkpoints, plans and update payloads read back exactly as written."""
    store = StateStore(tmp_path / "state")
    assert store.latest_round() is None
    store.save_checkpoint(0, {"w": torch.arange(4.0)}, {"round": 0})
    store.save_checkpoint(1, {"w": torch.ones(4)}, {"round": 1, "x": [1, 2]})
    assert store.latest_round() == 1
    ckpt = store.load_checkpoint(1)
    assert torch.equal(ckpt.tensors["w"], torch.ones(4)) and ckpt.meta["x"] == [1, 2]
    store.save_plan(2, ["p00", "p01"])
    assert store.load_plan(2) == ["p00", "p01"]
    update = Update("p01", 2, {"w": torch.full((3,), 0.5)}, num_examples=7, num_steps=3,
                    metrics={"train_loss": 1.25})
    store.save_update(update, "ab" * 32, pack_tensors(update.weights))
    [(back, digest)] = store.load_updates(2)
    assert digest == "ab" * 32 and back.participant == "p01" and back.num_examples == 7
    assert back.num_steps == 3 and back.metrics == {"train_loss": 1.25}
    assert torch.equal(back.weights["w"], update.weights["w"])
    assert not list((tmp_path / "state").rglob("*.tmp"))


def test_store_reads_an_update_file_of_the_layout_before_its_json(tmp_path):
    """An update saved before the payload was stored as received (its counts and digest as
    the file's safetensors metadata, no JSON beside it) is read back the same."""
    store = StateStore(tmp_path / "state")
    info = {"num_examples": 7, "num_steps": 3, "metrics": {"train_loss": 1.25},
            "class_counts": [3, 4], "payload_sha256": "ab" * 32}
    path = store.round_dir(2) / "updates" / "p01.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(st_save({"w": torch.full((3,), 0.5)},
                             metadata={"latentfl_update": json.dumps(info)}))
    [(back, digest)] = store.load_updates(2)
    assert digest == "ab" * 32 and (back.num_examples, back.num_steps) == (7, 3)
    assert back.class_counts == (3, 4) and torch.equal(back.weights["w"], torch.full((3,), 0.5))


def test_store_refuses_ids_that_are_not_file_names(tmp_path):
    """A participant id that could escape the folder is refused."""
    store = StateStore(tmp_path)
    with pytest.raises(StateError):
        store.save_update(Update("../evil", 1, {}, num_examples=1, num_steps=1), "00", b"")
