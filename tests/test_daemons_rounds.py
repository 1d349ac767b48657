"""The coordinator's round state machine, driven directly (no sockets)."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from daemon_helpers import STRATEGY
from latentfl.config import from_dict
from latentfl.errors import ConfigError, ProtocolError, Reason
from latentfl.models import model_manifest
from latentfl.platform.coordinator import (
    CoordinatorConfig,
    Journal,
    Rounds,
    StateStore,
    read_journal,
)
from latentfl.platform.coordinator.aggregation_worker import AggregationWorker
from latentfl.platform.coordinator.conductor import RoundConductor
from latentfl.platform.coordinator.intake import UpdateIntake
from latentfl.platform.protocol import Ack, Kind, ReplayGuard, decode, encode, pack_tensors
from latentfl.platform.wire.payloads import encode_update
from latentfl.strategies import Update, build_strategy


def _rounds(tmp_path, **overrides) -> Rounds:
    config = from_dict(CoordinatorConfig, {
        "session": "s", "key_dir": "k", "roster": "r", "state_dir": str(tmp_path / "state"),
        "rounds": 2, "min_participants": 2, "round_deadline": 100.0, "strategy": STRATEGY,
        **overrides})
    rounds = Rounds(config, build_strategy(config.strategy), StateStore(config.state_dir))
    rounds.resume()
    return rounds


def _update(rounds: Rounds, pid: str, shift: float) -> Update:
    weights = {k: v + shift for k, v in rounds.strategy.global_weights().items()}
    return Update(pid, rounds.round, weights, num_examples=10, num_steps=1)


def test_round_waits_plans_and_closes_at_quorum(tmp_path):
    """A round opens at min_participants and closes once quorum of its plan delivered."""
    rounds = _rounds(tmp_path, quorum=0.5)
    assert rounds.maybe_start(["a"], now=0.0) == {}
    tasks = rounds.maybe_start(["a", "b", "c"], now=0.0)
    assert sorted(tasks) == ["a", "b", "c"] and rounds.phase == "collecting"
    assert rounds.due(["a", "b", "c"], now=1.0) == ""
    rounds.accept(_update(rounds, "a", 1.0), "d1")
    assert rounds.due(["a", "b", "c"], now=1.0) == ""
    rounds.accept(_update(rounds, "b", 3.0), "d2")
    assert rounds.due(["a", "b", "c"], now=1.0) == "close"
    before = {k: v.clone() for k, v in rounds.strategy.global_weights().items()}
    rounds.begin_close()  # the daemon aggregates in a thread from here
    with pytest.raises(ProtocolError, match="closed"):
        rounds.check_update("c", 1, "d3")
    record = rounds.finish_close(rounds.aggregate())
    assert record.accepted == ["a", "b"] and rounds.round == 2 and rounds.phase == "waiting"
    for name, value in rounds.strategy.global_weights().items():
        assert torch.allclose(value, before[name] + 2.0, atol=1e-5)


def test_update_checks_name_the_reason(tmp_path):
    """Re-sends are acked once; duplicates, late, wrong-round and unplanned updates are refused."""
    rounds = _rounds(tmp_path)
    rounds.maybe_start(["a", "b"], now=0.0)
    assert rounds.check_update("a", 1, "d1") is False
    rounds.accept(_update(rounds, "a", 1.0), "d1")
    assert rounds.check_update("a", 1, "d1") is True
    for pid, rnd, digest, reason in [("a", 1, "other", "duplicate"), ("b", 2, "x", "wrong-round"),
                                     ("b", 0, "x", "late"), ("z", 1, "x", "not-in-round")]:
        with pytest.raises(ProtocolError) as info:
            rounds.check_update(pid, rnd, digest)
        assert info.value.reason == reason


def test_offline_stragglers_and_deadline(tmp_path):
    """Offline stragglers close the round early; too few updates at the deadline replan it."""
    rounds = _rounds(tmp_path, min_updates=1)
    rounds.maybe_start(["a", "b"], now=0.0)
    assert rounds.due(["a", "b"], now=10.0) == ""
    assert rounds.due(["a"], now=10.0) == ""  # a is online and may still deliver
    rounds.accept(_update(rounds, "a", 1.0), "d1")
    assert rounds.due(["a"], now=10.0) == "close"  # b went offline
    rounds.close()
    rounds.maybe_start(["a", "b"], now=20.0)
    assert rounds.due(["a", "b"], now=200.0) == "replan"
    rounds.replan()
    assert rounds.phase == "waiting" and rounds.round == 2


def test_resume_restores_the_round_in_progress(tmp_path):
    """A new Rounds on the same folder resumes the plan and the accepted updates, once each."""
    rounds = _rounds(tmp_path)
    rounds.maybe_start(["a", "b"], now=0.0)
    rounds.accept(_update(rounds, "a", 1.0), "d1")
    again = _rounds(tmp_path)
    assert again.round == 1 and again.phase == "collecting" and again.plan == ["a", "b"]
    assert list(again.updates) == ["a"] and again.digests == {"a": "d1"}
    assert again.check_update("a", 1, "d1") is True
    again.drop(["a"])
    assert _rounds(tmp_path).plan == ["b"] and not _rounds(tmp_path).updates


def _conductor(tmp_path, **overrides) -> RoundConductor:
    rounds = _rounds(tmp_path, **overrides)
    manifest = model_manifest(rounds.config.strategy.model.build())
    return RoundConductor(rounds.config, rounds, Journal(tmp_path / "journal.jsonl"), manifest,
                          None)


def test_conductor_sends_each_plans_tasks_encoded_once(tmp_path):
    """A new plan's TASKs go out; a re-send reuses the encoding; a closed round's are dropped."""
    conductor = _conductor(tmp_path)
    rounds = conductor.rounds
    opened = conductor.step(["a", "b"], now=0.0)
    assert [(o.peer, o.kind, o.round) for o in opened] == [("a", Kind.TASK, 1), ("b", Kind.TASK, 1)]
    assert conductor.task_for("a")[0].payload is opened[0].payload
    assert conductor.task_for("z") == []
    for pid, shift in (("a", 1.0), ("b", 3.0)):
        rounds.accept(_update(rounds, pid, shift), f"d-{pid}")
    assert conductor.step(["a", "b"], now=1.0) == [] and conductor.worker.busy
    record = conductor.finish(wait=60.0)
    assert record is not None and record.accepted == ["a", "b"] and rounds.round == 2
    second = conductor.step(["a", "b"], now=2.0)
    assert [o.round for o in second] == [2, 2] and second[0].payload != opened[0].payload
    events = [e["event"] for e in read_journal(tmp_path / "journal.jsonl")]
    assert events == ["round_opened", "round_closed", "round_opened"]


def test_the_loop_woken_by_a_finished_aggregation_collects_it_at_once(tmp_path):
    """The worker's wake-up runs in its own thread; a loop it wakes while that thread has not
    ended yet still collects the round then, not at its next deadline."""
    woken, release = threading.Event(), threading.Event()

    def on_done() -> None:  # the wake-up, with the worker thread held alive after it
        woken.set()
        release.wait(60.0)

    rounds = _rounds(tmp_path)
    worker = AggregationWorker(rounds, on_done)
    rounds.maybe_start(["a", "b"], now=0.0)
    for pid, shift in (("a", 1.0), ("b", 3.0)):
        rounds.accept(_update(rounds, pid, shift), f"d-{pid}")
    rounds.begin_close()
    worker.start()
    try:
        assert woken.wait(60.0)
        record = worker.poll()
    finally:
        release.set()
    assert record is not None and record.accepted == ["a", "b"] and not worker.busy


def test_aggregation_failure_surfaces_in_the_loops_thread(tmp_path):
    """An aggregation that raises in the worker thread raises again from finish()."""
    conductor = _conductor(tmp_path)
    rounds = conductor.rounds
    conductor.step(["a", "b"], now=0.0)
    for pid in ("a", "b"):
        rounds.accept(Update(pid, 1, {"not.a.tensor.of.the.model": torch.zeros(1)}, 10, 1), pid)
    conductor.step(["a", "b"], now=1.0)
    with pytest.raises(ConfigError, match="global model's tensors"):
        conductor.finish(wait=60.0)
    assert not conductor.worker.busy


def test_a_group_is_accepted_whole_or_not_at_all(tmp_path):
    """accept_group counts every update once its record succeeded; when the record fails, no
    update of the group is counted and none of their files is left."""
    rounds = _rounds(tmp_path)
    rounds.maybe_start(["a", "b", "c"], now=0.0)
    group = [(u, d, pack_tensors(u.weights)) for u, d in
             [(_update(rounds, "a", 1.0), "d1"), (_update(rounds, "b", 2.0), "d2")]]

    def record_fails():
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        rounds.accept_group(group, record_fails)
    assert rounds.updates == {}
    assert not list((tmp_path / "state").glob("rounds/*/updates/*"))
    rounds.accept_group(group, lambda: None)
    assert sorted(rounds.updates) == ["a", "b"]
    assert [d for _, d in rounds.store.load_updates(1)] == ["d1", "d2"]


@pytest.mark.parametrize("mode", ["plain", "secagg", "ckks"])
def test_round_below_min_updates_after_a_removal_is_not_aggregated(tmp_path, mode):
    """With min_updates = 2, a round that lost a participant (removed or revoked) and holds
    one update is never closed: it waits for its deadline and is planned again, in every
    aggregation mode."""
    overrides = {"min_updates": 2}
    if mode != "plain":
        overrides["aggregation"] = {"mode": mode, "min_cohort": 2}
    rounds = _rounds(tmp_path, **overrides)
    rounds.maybe_start(["a", "b"], now=0.0)
    rounds.drop(["b"])  # what remove and revoke do to the round in progress
    rounds.accept(_update(rounds, "a", 1.0), "d1")
    assert rounds.due(["a"], now=1.0) == ""
    assert rounds.due(["a"], now=200.0) == "replan"


def test_min_updates_counts_towards_the_early_close(tmp_path):
    """A quorum of the plan closes a round only once min_updates updates are in."""
    rounds = _rounds(tmp_path, min_updates=2, quorum=0.5)
    rounds.maybe_start(["a", "b"], now=0.0)
    rounds.accept(_update(rounds, "a", 1.0), "d1")
    assert rounds.due(["a", "b"], now=1.0) == ""
    rounds.accept(_update(rounds, "b", 1.0), "d2")
    assert rounds.due(["a", "b"], now=1.0) == "close"


def test_a_resend_after_its_round_closed_is_acked_again_not_late(tmp_path):
    """A re-send of an accepted update that arrives while its round aggregates or after it
    closed is a re-send (acked again), not a late update; another payload is still late."""
    rounds = _rounds(tmp_path)
    rounds.maybe_start(["a", "b"], now=0.0)
    rounds.accept(_update(rounds, "a", 1.0), "d1")
    rounds.accept(_update(rounds, "b", 1.0), "d2")
    rounds.begin_close()
    assert rounds.check_update("a", 1, "d1") is True
    rounds.finish_close(rounds.aggregate())
    assert rounds.check_update("b", 1, "d2") is True
    with pytest.raises(ProtocolError) as info:
        rounds.check_update("b", 1, "other")
    assert info.value.reason == "late"


def _signed_update(update: Update, key, *, payload: bytes | None = None):
    """The frames of ``update`` as its participant signs them (``payload``: other bytes,
    signed as they are)."""
    body, meta = encode_update(update)
    return encode(Kind.UPDATE, session="s", round=update.round, sender=update.participant,
                  signing_key=key, payload=body if payload is None else payload, meta=meta)


def _intake(rounds: Rounds, tmp_path) -> UpdateIntake:
    return UpdateIntake(rounds.config, rounds, Journal(tmp_path / "journal.jsonl"),
                        model_manifest(rounds.config.strategy.model.build()))


def test_an_accepted_update_is_stored_as_received_and_acked_by_its_digest(tmp_path):
    """The stored update file holds exactly the payload bytes that were received and checked
    (no re-serialisation), its SHA-256 is the digest recorded beside it, in the journal and in
    the ACK, and a restart reads the same tensors back."""
    rounds = _rounds(tmp_path)
    rounds.maybe_start(["a", "b"], now=0.0)
    key = Ed25519PrivateKey.generate()
    update = _update(rounds, "a", 0.5)
    frames = _signed_update(update, key)
    message = decode(frames, user_id="a", verify_key=key.public_key(), session="s",
                     replay=ReplayGuard(None), max_bytes=1 << 24, expected_round=None)
    intake = _intake(rounds, tmp_path)
    assert intake.receive(message) == []
    (ack,), accepted = intake.commit()
    digest = hashlib.sha256(frames[2]).hexdigest()
    assert accepted == ["a"] and ack.meta == Ack(digest).meta() and ack.peer == "a"
    path = rounds.store.round_dir(1) / "updates" / "a.safetensors"
    assert path.read_bytes() == frames[2]
    assert json.loads(path.with_suffix(".json").read_text())["payload_sha256"] == digest
    assert [e["sha256"] for e in read_journal(tmp_path / "journal.jsonl")
            if e["event"] == "accepted"] == [digest]
    [(back, stored_digest)] = rounds.store.load_updates(1)
    assert stored_digest == digest and back.num_examples == update.num_examples
    assert all(torch.equal(back.weights[k], update.weights[k]) for k in update.weights)


def test_each_update_of_a_group_commit_is_logged_with_its_own_count(tmp_path):
    """Two updates made durable in one group commit log 'updates 1/2' and 'updates 2/2', in
    arrival order (each line counts up to its own update, not to the group's end)."""
    rounds = _rounds(tmp_path)
    rounds.maybe_start(["a", "b"], now=0.0)
    intake = _intake(rounds, tmp_path)
    for pid, shift in (("a", 0.5), ("b", 0.25)):
        key = Ed25519PrivateKey.generate()
        message = decode(_signed_update(_update(rounds, pid, shift), key), user_id=pid,
                         verify_key=key.public_key(), session="s", replay=ReplayGuard(None),
                         max_bytes=1 << 24, expected_round=None)
        assert intake.receive(message) == []
    with capture_logs() as logs:
        acks, accepted = intake.commit()
    assert accepted == ["a", "b"] and len(acks) == 2
    lines = [e for e in logs if e["event"] == "update_accepted"]
    assert [(e["peer"], e["have"], e["group"]) for e in lines] == [("a", 1, 2), ("b", 2, 2)]
    assert [e["summary"] for e in lines] == ["round 1: updates 1/2 (from a)",
                                             "round 1: updates 2/2 (from b)"]


def test_a_tampered_or_invalid_update_is_refused_and_nothing_is_stored(tmp_path):
    """A payload changed after signing is refused by the envelope ('bad-hash'); a signed
    payload that fails the strict decode (a NaN) is refused by the intake; neither leaves a
    file."""
    rounds = _rounds(tmp_path)
    rounds.maybe_start(["a", "b"], now=0.0)
    key = Ed25519PrivateKey.generate()
    options = dict(user_id="a", verify_key=key.public_key(), session="s",
                   replay=ReplayGuard(None), max_bytes=1 << 24, expected_round=None)
    update = _update(rounds, "a", 0.5)
    frames = _signed_update(update, key)
    tampered = bytearray(frames[2])
    tampered[-1] ^= 1
    with pytest.raises(ProtocolError) as info:
        decode([frames[0], frames[1], bytes(tampered)], **options)
    assert info.value.reason is Reason.BAD_HASH
    bad = dict(update.weights)
    name = next(iter(bad))
    bad[name] = bad[name].clone()
    bad[name].view(-1)[0] = float("nan")
    message = decode(_signed_update(update, key, payload=pack_tensors(bad)), **options)
    with pytest.raises(ProtocolError) as info:
        _intake(rounds, tmp_path).receive(message)
    assert info.value.reason is Reason.NON_FINITE
    assert not list((tmp_path / "state").glob("rounds/*/updates/*"))
