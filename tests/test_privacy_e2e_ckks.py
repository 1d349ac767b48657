"""CKKS secure aggregation through the daemons: real sockets, CURVE keys and TenSEAL contexts."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon_helpers import (
    PARTITION,
    STRATEGY,
    RawClient,
    Running,
    checkpoint_global,
    local_parts,
    make_consortium,
    simulate,
    start_agents,
    tiny_dataset,
)
from latentfl.config import from_dict
from latentfl.errors import ConfigError, ProtocolError, Reason, SecurityError
from latentfl.models import model_manifest
from latentfl.platform.coordinator import (
    Coordinator,
    Journal,
    Rounds,
    StateStore,
    read_journal,
)
from latentfl.platform.coordinator.secure import SecureAggregation
from latentfl.platform.crypto.ckks_keys import load_participant_context, write_ckks_keys
from latentfl.platform.participant import Agent
from latentfl.platform.payloads import (
    decode_task,
    encode_encrypted_update,
    encode_update,
    flatten_state,
    state_length,
    unflatten_state,
)
from latentfl.platform.protocol import (
    Kind,
    Message,
    encode,
    pack_json,
    parse_header,
    unpack_tensors,
)
from latentfl.privacy import (
    ciphertexts_from_tensors,
    ciphertexts_to_tensors,
    create_context,
    decrypt_aggregate,
    encrypt_update,
    secret_context_bytes,
)
from latentfl.simulate import SimulationConfig, run_simulation
from latentfl.strategies import Aggregation, ModelSpec, Update, build_strategy

IDS = ["p00", "p01", "p02", "p03"]
CKKS = {"mode": "ckks", "min_cohort": 2, "decrypt_deadline": 1.0}


@pytest.fixture(scope="module")
def dataset():
    return tiny_dataset()


@pytest.fixture
def consortium(tmp_path):
    c = make_consortium(tmp_path, IDS)
    write_ckks_keys(c.keys)
    return c


def _manifest():
    return model_manifest(from_dict(ModelSpec, STRATEGY["model"]).build())


def _uploads(state_dir, round) -> dict[str, tuple[list[bytes], int]]:
    """Each accepted encrypted upload of ``round``: its ciphertexts and example count."""
    return {u.participant: (ciphertexts_from_tensors(u.weights), u.num_examples)
            for u, _ in StateStore(state_dir).load_updates(round)}


def _observe(coordinator: Coordinator) -> list[tuple[str, list[bytes]]]:
    sent: list[tuple[str, list[bytes]]] = []
    coordinator.send_observers.append(lambda pid, frames: sent.append((pid, list(frames))))
    return sent


def _ciphertext_tasks(sent) -> list[tuple[str, dict, list[bytes]]]:
    """(recipient, meta, ciphertexts) of every message the coordinator sent with ciphertexts."""
    out = []
    for pid, frames in sent:
        header = json.loads(frames[0])
        tensors = unpack_tensors(frames[2]) if frames[2] else {}
        if any(name.startswith("ckks/") for name in tensors):
            out.append((pid, {"kind": header["kind"], **header["meta"]},
                        ciphertexts_from_tensors(tensors)))
    return out


def test_coordinator_holds_only_a_public_context_and_refuses_bad_configs(consortium, tmp_path):
    """The coordinator's context cannot decrypt; a secret context, feddgm with CKKS,
    and a missing context are refused before it starts."""
    coord = Coordinator(consortium.coordinator_config(aggregation=CKKS))
    ctx = coord.secure.context
    assert not ctx.is_private()
    secret = load_participant_context(consortium.keys / "participants" / "p00")
    blobs = encrypt_update(secret, torch.ones(5), weight=1.0)
    with pytest.raises(SecurityError):
        decrypt_aggregate(ctx, blobs, 5)
    coord.store.unlock()

    secret_file = tmp_path / "secret.bin"
    secret_file.write_bytes(secret_context_bytes(create_context()))
    with pytest.raises(SecurityError, match="secret key"):
        Coordinator(consortium.coordinator_config(aggregation=CKKS, ckks_context=str(secret_file),
                                                  state_dir=str(tmp_path / "s2")))
    with pytest.raises(SecurityError, match="cannot be read"):
        Coordinator(consortium.coordinator_config(aggregation=CKKS,
                                                  ckks_context=str(tmp_path / "none.bin"),
                                                  state_dir=str(tmp_path / "s3")))
    with pytest.raises(ConfigError, match="feddgm.*needs each participant"):
        consortium.coordinator_config(aggregation=CKKS, strategy={**STRATEGY,
                                                                 "method": "feddgm"})


def test_encrypted_fedavg_equals_the_plaintext_simulator(consortium, dataset):
    """3 agents, 2 CKKS rounds: the result equals the plaintext simulator within 1e-5, and the
    only ciphertexts the coordinator ever sent are sums, to one participant per round."""
    ids = IDS[:3]
    config = consortium.coordinator_config(aggregation=CKKS)
    coordinator = Coordinator(config)
    sent = _observe(coordinator)
    coord = Running(coordinator)
    agents = start_agents(consortium, local_parts(dataset, 3), ids)
    assert coord.join(120) == 0
    assert [a.join(20) for a in agents] == [0, 0, 0]

    reference = simulate(dataset, 3, 2).strategy.global_weights()
    final = checkpoint_global(config.state_dir, 2)
    for name, value in reference.items():
        assert torch.allclose(final[name], value, atol=1e-5, rtol=0), name

    individual = {b for r in (1, 2) for blobs, _ in _uploads(config.state_dir, r).values()
                  for b in blobs}
    carried = _ciphertext_tasks(sent)
    assert [(pid, meta["kind"], meta["cohort"]) for pid, meta, _ in carried] == [
        ("p00", "DECRYPT_TASK", 3), ("p00", "DECRYPT_TASK", 3)]
    assert not any(b in individual for _, _, blobs in carried for b in blobs)
    journal = read_journal(config.state_dir / "journal.jsonl")
    assert [e["encrypted"] for e in journal if e.get("kind") == "ENCRYPTED_UPDATE"] == [True] * 6
    assert not any(e.get("kind") == "UPDATE" for e in journal)


def _raw_upload(client: RawClient, ctx, examples: int) -> tuple[Update, list[bytes]]:
    """A hand-driven participant: take the TASK, upload its weights (untrained) encrypted."""
    task_msg = client.recv(timeout=10.0, kind=Kind.TASK)
    assert task_msg is not None
    task, _ = decode_task(task_msg, max_bytes=2**28)
    assert task.aggregation is Aggregation.CKKS
    flat = flatten_state(task.weights, _manifest())
    blobs = encrypt_update(ctx, flat, weight=examples)
    return Update(client.identity.id, task.round, {}, examples, 1), blobs


def test_dropout_bad_ciphertexts_and_a_silent_decryptor(consortium, dataset):
    """p03 uploads malformed ciphertexts (REJECT) and drops out; p00 uploads but never decrypts:
    the sum covers p00-p02, p01 decrypts it, and it equals their weighted mean within 1e-5."""
    config = consortium.coordinator_config(aggregation=CKKS, rounds=1, min_participants=4,
                                           round_deadline=4.0)
    coordinator = Coordinator(config)
    sent = _observe(coordinator)
    coord = Running(coordinator)
    ctx = load_participant_context(consortium.keys / "participants" / "p00")
    silent, dropper = (RawClient(consortium, consortium.identity(p)) for p in ("p00", "p03"))
    try:
        for client in (silent, dropper):
            client.send(client.frames(Kind.HELLO, 0, pack_json({"num_examples": 50})))
        parts = local_parts(dataset, 3)
        agents = [Running(Agent(consortium.participant_config(p), data=parts[i]))
                  for i, p in ((1, "p01"), (2, "p02"))]
        update, blobs = _raw_upload(silent, ctx, 50)
        payload, meta = encode_encrypted_update(update, blobs)
        silent.send(silent.frames(Kind.ENCRYPTED_UPDATE, 1, payload, meta))
        assert silent.recv(timeout=5.0, kind=Kind.ACK) is not None
        bad_update, bad_blobs = _raw_upload(dropper, ctx, 50)
        payload, meta = encode_encrypted_update(bad_update, bad_blobs + bad_blobs[:1])
        dropper.send(dropper.frames(Kind.ENCRYPTED_UPDATE, 1, payload, meta))
        reject = dropper.recv(timeout=5.0, kind=Kind.REJECT)
        assert reject is not None and reject.header.meta["reason"] == "bad-ciphertext"
        ask = silent.recv(timeout=15.0, kind=Kind.DECRYPT_TASK)  # to p00 first: ignored
        assert ask is not None and ask.header.meta["cohort"] == 3
        assert coord.join(60) == 0
        assert [a.join(20) for a in agents] == [0, 0]
    finally:
        silent.close()
        dropper.close()

    journal = read_journal(config.state_dir / "journal.jsonl")
    asked = [e["peer"] for e in journal if e["event"] == "decrypt_requested"]
    assert asked[:2] == ["p00", "p01"]
    assert [e["peer"] for e in journal if e.get("kind") == "AGGREGATE"] == ["p01"]
    closed = [e for e in journal if e["event"] == "round_closed"]
    assert closed[0]["accepted"] == ["p00", "p01", "p02"]

    uploads = _uploads(config.state_dir, 1)
    assert sorted(uploads) == ["p00", "p01", "p02"]
    length = state_length(_manifest())
    numerator = sum(decrypt_aggregate(ctx, b, length, total_weight=1.0).double()
                    for b, _ in uploads.values())
    expected = numerator / sum(n for _, n in uploads.values())
    got = flatten_state(checkpoint_global(config.state_dir, 1), _manifest())
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    individual = {b for blobs, _ in uploads.values() for b in blobs} | set(bad_blobs)
    carried = _ciphertext_tasks(sent)
    assert {pid for pid, _, _ in carried} <= {"p00", "p01"}
    assert all(meta["kind"] == "DECRYPT_TASK" and meta["cohort"] == 3 for _, meta, _ in carried)
    assert not any(b in individual for _, _, blobs in carried for b in blobs)


def test_encrypted_dynafed_equals_the_plaintext_simulator(consortium, dataset):
    """DynaFed under CKKS: its trajectory (the decrypted aggregates) equals the plaintext
    simulator's within 1e-5, and synthesis and fine-tuning run on it alone."""
    strategy = {**STRATEGY, "method": "dynafed",
                "dynafed": {"trajectory_length": 2, "ipc": 1, "syn_steps": 2, "iterations": 2,
                            "augment": False, "finetune_steps": 2, "finetune_augment": False,
                            "device": "cpu"}}
    config = consortium.coordinator_config(aggregation=CKKS, strategy=strategy)
    coord = Running(Coordinator(config))
    agents = start_agents(consortium, local_parts(dataset, 3), IDS[:3])
    assert coord.join(120) == 0
    assert [a.join(20) for a in agents] == [0, 0, 0]
    sim = run_simulation(from_dict(SimulationConfig, {
        "participants": 3, "rounds": 2, "seed": 0, "device": "cpu",
        "partition": dataclasses.asdict(PARTITION), "strategy": strategy}), dataset=dataset)
    ckpt = StateStore(config.state_dir).load_checkpoint(2)
    reference = torch.stack(sim.strategy.trajectory)
    assert torch.allclose(ckpt.tensors["trajectory"], reference, atol=1e-5, rtol=0)
    assert ckpt.meta["strategy"]["synthesised"] is True
    # fine-tuning is Adam (steps of about lr each, whatever the gradient's size), so the final
    # models agree to 2 steps x lr 1e-4 x 2, not to CKKS precision
    final = checkpoint_global(config.state_dir, 2)
    for name, value in sim.strategy.global_weights().items():
        assert torch.allclose(final[name], value, atol=5e-4, rtol=0), name
    closed = [e for e in read_journal(config.state_dir / "journal.jsonl")
              if e["event"] == "round_closed"]
    assert "finetune_loss" in closed[1]["metrics"]


def test_site_without_its_secret_context_declines_before_training(consortium, dataset):
    """A site whose sealed CKKS context is missing declines the ckks task (ckks-unavailable)
    without spending anything; the round goes on with the others."""
    (consortium.keys / "participants" / "p02" / "ckks_secret.enc").unlink()
    config = consortium.coordinator_config(aggregation=CKKS, rounds=1)
    coord = Running(Coordinator(config))
    agents = start_agents(consortium, local_parts(dataset, 3), IDS[:3])
    assert coord.join(60) == 0
    assert [a.join(20) for a in agents] == [0, 0, 0]
    journal = read_journal(config.state_dir / "journal.jsonl")
    assert [(e["peer"], e["reason"]) for e in journal if e["event"] == "declined"] == [
        ("p02", "ckks-unavailable")]
    closed = [e for e in journal if e["event"] == "round_closed"]
    assert closed[0]["accepted"] == ["p00", "p01"]


def test_encrypted_updates_survive_a_coordinator_restart(consortium):
    """Acked encrypted uploads are on disk; a restarted coordinator sums them to the same mean."""
    config = consortium.coordinator_config(aggregation=CKKS, min_participants=2)
    ctx = load_participant_context(consortium.keys / "participants" / "p00")
    manifest = _manifest()
    rounds = Rounds(config, build_strategy(config.strategy), StateStore(config.state_dir))
    rounds.resume()
    tasks = rounds.maybe_start(["p00", "p01"], now=0.0)
    start = flatten_state(tasks["p00"].weights, manifest)
    for i, pid in enumerate(["p00", "p01"]):
        blobs = encrypt_update(ctx, start + i, weight=10 * (i + 1))
        rounds.accept(Update(pid, 1, ciphertexts_to_tensors(blobs), 10 * (i + 1), 1), f"d{i}")
    restarted = Rounds(config, build_strategy(config.strategy), StateStore(config.state_dir))
    restarted.resume()
    assert sorted(restarted.updates) == ["p00", "p01"]
    secure = SecureAggregation(config, manifest, journal=Journal(config.state_dir / "j.jsonl"))
    secure.start(1, restarted.updates)
    assert secure.cohort == ["p00", "p01"] and secure.total_weight == 30
    assert secure.next_decryptor(["p01", "p00"], now=0.0) == "p00"
    assert secure.next_decryptor(["p01", "p00"], now=0.5) is None  # within the deadline
    assert secure.next_decryptor(["p01", "p00"], now=2.0) == "p01"  # fallback
    mean = decrypt_aggregate(ctx, secure.sum, secure.length, total_weight=secure.total_weight)
    assert torch.allclose(mean.double(), start + 20 / 30, atol=1e-5, rtol=0)


def _signed(kind: Kind, sender: str, round: int, payload: bytes, meta: dict) -> Message:
    frames = encode(kind, session="s", round=round, sender=sender,
                    signing_key=Ed25519PrivateKey.generate(), payload=payload, meta=meta)
    return Message(parse_header(frames[0]), frames[2])


def test_secure_aggregation_is_a_state_machine_with_an_outbox(consortium, tmp_path):
    """close() sums and asks one decryptor, step() the next after the deadline; only an asked
    participant's AGGREGATE of the right weight is taken, once, and each is acked."""
    config = consortium.coordinator_config(aggregation=CKKS, min_participants=2)
    ctx = load_participant_context(consortium.keys / "participants" / "p00")
    manifest = _manifest()
    journal = Journal(tmp_path / "journal.jsonl")
    secure = SecureAggregation(config, manifest, journal=journal)
    start = torch.zeros(state_length(manifest), dtype=torch.float64)
    updates = {pid: Update(pid, 1, ciphertexts_to_tensors(encrypt_update(ctx, start, weight=n)),
                           n, 1) for pid, n in (("p00", 10), ("p01", 20))}
    [ask] = secure.close(1, updates, ["p01", "p00"], now=0.0)
    assert (ask.peer, ask.kind, ask.round, ask.meta["total_weight"]) == (
        "p00", Kind.DECRYPT_TASK, 1, 30)
    assert secure.step(["p00", "p01"], now=0.5) == []
    [again] = secure.step(["p00", "p01"], now=2.0)
    assert again.peer == "p01" and again.payload == ask.payload

    weights = unflatten_state(start, manifest)
    payload, meta = encode_update(Update("p02", 1, weights, num_examples=30, num_steps=0))
    with pytest.raises(ProtocolError) as refused:
        secure.receive_aggregate(_signed(Kind.AGGREGATE, "p02", 1, payload, meta))
    assert refused.value.reason is Reason.NOT_ASKED
    light, light_meta = encode_update(Update("p01", 1, weights, num_examples=29, num_steps=0))
    with pytest.raises(ProtocolError, match="covers 29 examples"):
        secure.receive_aggregate(_signed(Kind.AGGREGATE, "p01", 1, light, light_meta))
    answer = _signed(Kind.AGGREGATE, "p01", 1, payload, meta)
    acks, aggregate = secure.receive_aggregate(answer)
    assert [(a.peer, a.kind) for a in acks] == [("p01", Kind.ACK)] and aggregate.num_examples == 30
    assert not secure.waiting and secure.step(["p00", "p01"], now=9.0) == []
    acks, aggregate = secure.receive_aggregate(answer)  # a re-send: acked, not used twice
    assert len(acks) == 1 and aggregate is None
    events = [(e["event"], e.get("peer")) for e in read_journal(tmp_path / "journal.jsonl")]
    assert events == [("encrypted_sum", None), ("decrypt_requested", "p00"),
                      ("decrypt_requested", "p01"), ("accepted", "p01")]
