"""ckks through the daemons: secagg's exchange with CKKS-encrypted masked words, on real
sockets, CURVE keys and TenSEAL contexts."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
import torch
import zmq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from daemon_helpers import (
    PARTITION,
    SESSION,
    STRATEGY,
    RawClient,
    Running,
    checkpoint_global,
    events_after_abandonment,
    local_parts,
    make_consortium,
    simulate,
    start_agents,
    tiny_dataset,
)
from latentfl.config import from_dict
from latentfl.errors import ConfigError, ProtocolError, Reason, SecurityError
from latentfl.models import model_manifest, state_length
from latentfl.platform.coordinator import Coordinator, Journal, StateStore, read_journal
from latentfl.platform.coordinator.ckks_sum import EncryptedSum
from latentfl.platform.crypto import load_identity, load_roster
from latentfl.platform.crypto.ckks_keys import load_participant_context, write_ckks_keys
from latentfl.platform.participant import Agent
from latentfl.platform.participant.masked_round import MaskedRound
from latentfl.platform.protocol import (
    Kind,
    Message,
    ReplayGuard,
    Verifier,
    encode,
    pack_json,
    parse_header,
    unpack_tensors,
)
from latentfl.platform.wire.payloads import (
    encode_decrypt_task,
    encode_limb_sums,
    encode_update,
)
from latentfl.privacy import (
    ciphertexts_from_tensors,
    ciphertexts_to_tensors,
    create_context,
    decrypt_limb_sums,
    encrypt_masked,
    join_limbs,
    secret_context_bytes,
    sum_ciphertexts,
)
from latentfl.simulate import SimulationConfig, run_simulation
from latentfl.strategies import ModelSpec, Update, build_strategy, run_task
from secagg_helpers import make_parties, share_all

IDS = ["p00", "p01", "p02", "p03"]
CKKS = {"mode": "ckks", "min_cohort": 2, "decrypt_deadline": 1.0, "phase_deadline": 20.0}
# the decoded mean is exact to 2^-31 per weight (CKKS rounding of the limb sums is exact); the
# float32 weights and the simulator's own float32 mean add rounding of the same order
TOLERANCE = 1e-5


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


def _observe(coordinator: Coordinator) -> list[tuple[str, dict, dict]]:
    """(recipient, header, payload tensors or {}) of every message the coordinator sends."""
    sent: list[tuple[str, dict, dict]] = []

    def seen(pid, frames):
        header = json.loads(frames[0])
        tensors = unpack_tensors(bytes(frames[2])) if header["kind"] == "DECRYPT_TASK" else {}
        sent.append((pid, header, tensors))

    coordinator.send_observers.append(seen)
    return sent


def test_coordinator_holds_only_a_public_context_and_refuses_bad_configs(consortium, tmp_path):
    """The coordinator's context cannot decrypt; a secret context, feddgm with ckks,
    and a missing context are refused before it starts."""
    coord = Coordinator(consortium.coordinator_config(aggregation=CKKS))
    ctx = coord.masked.encrypted.context
    assert not ctx.is_private()
    secret = load_participant_context(consortium.keys / "participants" / "p00")
    blobs = encrypt_masked(secret, np.arange(5, dtype=np.uint64))
    with pytest.raises(SecurityError):
        decrypt_limb_sums(ctx, blobs, 5, cohort=2)
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


def test_masked_ckks_fedavg_equals_the_plaintext_simulator(consortium, dataset):
    """3 agents, 2 ckks rounds: the result equals the plaintext simulator within the
    quantisation error; the coordinator held only ciphertexts, sent only sums (one DECRYPT_TASK
    per round) and got back only masked limb sums, unmasked with secagg's shares."""
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
        assert torch.allclose(final[name], value, atol=TOLERANCE, rtol=0), name

    journal = read_journal(config.state_dir / "journal.jsonl")
    kinds = [e.get("kind") for e in journal if e["event"] == "accepted"]
    assert kinds.count("ENCRYPTED_UPDATE") == 6 and kinds.count("AGGREGATE") == 2
    assert "UPDATE" not in kinds and "MASKED_UPDATE" not in kinds
    assert [(e["round"], e["covers"]) for e in journal if e["event"] == "encrypted_sum"] == [
        (1, ids), (2, ids)]
    assert [(e["round"], e["covers"], e["dropped"]) for e in journal
            if e["event"] == "secagg_unmasked"] == [(1, ids, []), (2, ids, [])]
    # what the coordinator stored of each participant is ciphertexts only
    individual = set()
    for r in (1, 2):
        for update, _ in StateStore(config.state_dir).load_updates(r):
            blobs = ciphertexts_from_tensors(update.weights)
            individual |= set(blobs)
    # it sent the secagg steps and one DECRYPT_TASK of a sum per round, never an upload
    tasks = [(pid, h, t) for pid, h, t in sent if h["kind"] == "DECRYPT_TASK"]
    assert [(pid, h["meta"]["cohort"]) for pid, h, _ in tasks] == [("p00", 3), ("p00", 3)]
    assert not any(b in individual for _, _, t in tasks for b in ciphertexts_from_tensors(t))
    assert {h["kind"] for _, h, _ in sent} <= {
        "TASK", "ACK", "HEARTBEAT", "STATUS", "SECAGG_KEY_LIST", "SECAGG_SHARE_INBOX",
        "SECAGG_SURVIVORS", "SECAGG_UNMASK", "DECRYPT_TASK"}


def test_masked_ckks_dynafed_equals_the_plaintext_simulator(consortium, dataset):
    """DynaFed under ckks: its trajectory (the unmasked aggregates) equals the plaintext
    simulator's within the quantisation error, and synthesis and fine-tuning run on it."""
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
    assert torch.allclose(ckpt.tensors["trajectory"], reference, atol=TOLERANCE, rtol=0)
    assert ckpt.meta["strategy"]["synthesised"] is True
    closed = [e for e in read_journal(config.state_dir / "journal.jsonl")
              if e["event"] == "round_closed"]
    assert "finetune_loss" in closed[1]["metrics"]


def test_site_without_its_secret_context_declines_before_training(consortium, dataset):
    """A site whose sealed CKKS context is missing declines the ckks task (ckks-unavailable)
    without spending anything; the round goes on with the others."""
    (consortium.keys / "participants" / "p02" / "ckks_secret.enc").unlink()
    config = consortium.coordinator_config(aggregation={**CKKS, "phase_deadline": 2.0},
                                           rounds=1)
    coord = Running(Coordinator(config))
    agents = start_agents(consortium, local_parts(dataset, 3), IDS[:3])
    assert coord.join(60) == 0
    assert [a.join(20) for a in agents] == [0, 0, 0]
    journal = read_journal(config.state_dir / "journal.jsonl")
    assert [(e["peer"], e["reason"]) for e in journal if e["event"] == "declined"] == [
        ("p02", "ckks-unavailable")]
    closed = [e for e in journal if e["event"] == "round_closed"]
    assert closed[0]["accepted"] == ["p00", "p01"]


def _drop_after_sharing(client: RawClient, roster, ctx, *, bad_upload: bool = False) -> None:
    """A hand-driven site that runs the real secagg glue of a ckks round up to its shares,
    (with ``bad_upload``: sends ciphertexts one too many and checks the REJECT), then
    vanishes."""
    client.send(client.frames(Kind.HELLO, 0, pack_json({"num_examples": 50})))
    task = client.recv(timeout=30.0, kind=Kind.TASK)
    assert task is not None and task.header.meta["aggregation"] == "ckks"
    masked = MaskedRound(task, pid=client.identity.id, session=SESSION,
                         signing_key=client.identity.signing_key,
                         verify_keys=load_roster(roster).verify_keys(), ckks=ctx)
    for reply in (masked.keys,
                  lambda: masked.on_key_list(client.recv(timeout=30.0,
                                                         kind=Kind.SECAGG_KEY_LIST))):
        kind, payload, meta = reply()
        client.send(client.frames(kind, task.header.round, payload, meta))
    assert client.recv(timeout=30.0, kind=Kind.SECAGG_SHARE_INBOX) is not None
    if bad_upload:
        blobs = encrypt_masked(ctx, np.zeros(state_length(_manifest()), dtype=np.uint64))
        update = Update(client.identity.id, task.header.round,
                        ciphertexts_to_tensors(blobs + blobs[:1]), 50, 1)
        payload, meta = encode_update(update)
        client.send(client.frames(Kind.ENCRYPTED_UPDATE, task.header.round, payload,
                                  meta | {"attempt": masked.attempt}))
        reject = client.recv(timeout=10.0, kind=Kind.REJECT)
        assert reject is not None and reject.header.meta["reason"] == "bad-ciphertext"
    client.close()


def test_a_site_dropping_after_sharing_is_unmasked_from_the_others_shares(tmp_path, dataset):
    """p03 advertises and shares, sends malformed ciphertexts (REJECT bad-ciphertext), then
    drops: the sum covers the three uploads, the survivors' shares rebuild p03's mask key, and
    the result equals their weighted mean computed here."""
    consortium = make_consortium(tmp_path, IDS)
    write_ckks_keys(consortium.keys)
    ctx = load_participant_context(consortium.keys / "participants" / "p03")
    config = consortium.coordinator_config(aggregation=CKKS, rounds=1, min_participants=4,
                                           quorum=0.75)
    coord = Running(Coordinator(config))
    dropper = RawClient(consortium, consortium.identity("p03"))
    parts = local_parts(dataset, 4)
    agents = start_agents(consortium, parts[:3], IDS[:3])
    _drop_after_sharing(dropper, consortium.roster, ctx, bad_upload=True)
    assert coord.join(120) == 0
    [a.stop() for a in agents]

    journal = read_journal(config.state_dir / "journal.jsonl")
    assert [e["covers"] for e in journal if e["event"] == "encrypted_sum"] == [IDS[:3]]
    assert [(e["covers"], e["dropped"]) for e in journal if e["event"] == "secagg_unmasked"] == [
        (IDS[:3], ["p03"])]
    strategy = build_strategy(config.strategy)
    strategy.initialize(config.seed)
    tasks = strategy.configure_round(1, IDS)
    updates = [run_task(tasks[pid], strategy.model_spec, parts[i].x, parts[i].y, participant=pid)
               for i, pid in enumerate(IDS[:3])]
    strategy.aggregate_round(1, updates)
    final = checkpoint_global(config.state_dir, 1)
    for name, value in strategy.global_weights().items():
        assert torch.allclose(final[name], value, atol=TOLERANCE, rtol=0), name


def test_too_few_survivors_abandon_the_round_without_decrypting(tmp_path):
    """Every site vanishes after sharing: below min_cohort the ckks round is abandoned with a
    journal line; nothing is summed, decrypted or unmasked."""
    consortium = make_consortium(tmp_path, IDS[:3])
    write_ckks_keys(consortium.keys)
    ctx = load_participant_context(consortium.keys / "participants" / "p00")
    config = consortium.coordinator_config(aggregation=CKKS, rounds=1, round_deadline=6.0)
    coord = Running(Coordinator(config))
    clients = [RawClient(consortium, consortium.identity(pid)) for pid in IDS[:3]]
    threads = [threading.Thread(target=_drop_after_sharing, args=(c, consortium.roster, ctx))
               for c in clients]
    events = events_after_abandonment(threads, coord, config.state_dir / "journal.jsonl")
    assert "secagg_shares" in events and "round_abandoned" in events
    assert not {"encrypted_sum", "decrypt_requested", "secagg_unmasked"} & set(events)


def _masked_upload_of(update: np.ndarray, ctx) -> tuple[list[bytes], int]:
    """One site's ckks upload of ``update`` in a three-site secagg exchange run here (the
    coordinator's view: its ciphertexts), and the number of sites."""
    ids = ["p00", "p01", "p02"]
    clients, server = make_parties(ids, update.size)
    share_all(clients, server)
    return encrypt_masked(ctx, clients["p01"].mask(update, 100)), len(ids)


def test_decrypt_task_for_an_uncertified_upload_is_declined_without_a_value(consortium,
                                                                              dataset):
    """A coordinator that hands the agent's real DECRYPT_TASK handler one site's ciphertext as a
    'sum', outside any attempt this site signed, gets a DECLINE naming the rule and no value."""
    ctx = load_participant_context(consortium.keys / "participants" / "p01")
    coordinator = load_identity(consortium.keys / "coordinator")
    agent = Agent(consortium.participant_config("p00"), data=local_parts(dataset, 3)[0])
    zctx = zmq.Context()
    ours, theirs = zctx.socket(zmq.PAIR), zctx.socket(zmq.PAIR)
    ours.linger = theirs.linger = 0
    ours.bind("inproc://curious")
    theirs.connect("inproc://curious")
    verifier = Verifier.of_roster(load_roster(consortium.roster), session=SESSION,
                                  replay=ReplayGuard(window_s=300.0))
    try:
        blobs, cohort = _masked_upload_of(np.full(2000, 1234.5), ctx)
        payload, meta = encode_decrypt_task(blobs, length=2000, cohort=cohort)
        frames = encode(Kind.DECRYPT_TASK, session=SESSION, round=1, sender="coordinator",
                        signing_key=coordinator.signing_key, payload=payload,
                        meta=meta | {"attempt": f"{1:016x}"})
        with capture_logs() as logs:
            agent._on_message(ours, agent.verifier.verify(frames, user_id="coordinator"))
        assert theirs.poll(20_000)
        answer = verifier.verify(theirs.recv_multipart(), user_id="p00")
    finally:
        ours.close(0)
        theirs.close(0)
        zctx.term()
        agent.replay.close()
    assert answer.header.kind is Kind.DECLINE
    assert answer.header.meta["reason"] == "secagg_not_signed"
    assert "1234" not in repr(answer.header.meta) + repr(logs)


def _signed(kind: Kind, sender: str, round: int, payload: bytes, meta: dict) -> Message:
    frames = encode(kind, session="s", round=round, sender=sender,
                    signing_key=Ed25519PrivateKey.generate(), payload=payload, meta=meta)
    return Message(parse_header(frames[0]), frames[2])


def test_encrypted_sum_is_a_state_machine_with_an_outbox(consortium, tmp_path):
    """start() sums, step() asks one decryptor and the next after the deadline; only an asked
    participant's limb sums of the right shape are taken, once, joined into the masked sum,
    and each is acked."""
    config = consortium.coordinator_config(aggregation=CKKS, min_participants=2)
    ctx = load_participant_context(consortium.keys / "participants" / "p00")
    length = state_length(_manifest())
    journal = Journal(tmp_path / "journal.jsonl")
    encrypted = EncryptedSum(config, length, journal=journal)
    rng = np.random.default_rng(0)
    words = {p: rng.integers(0, 2**64, length, dtype=np.uint64) for p in ("p00", "p01")}
    uploads = {p: encrypt_masked(ctx, w) for p, w in words.items()}
    for blobs in uploads.values():
        encrypted.check_upload(blobs)
    encrypted.start(1, "a" * 16, uploads)
    [ask] = encrypted.step(["p01", "p00"], now=0.0)
    assert (ask.peer, ask.kind, ask.meta["cohort"], ask.meta["attempt"]) == (
        "p00", Kind.DECRYPT_TASK, 2, "a" * 16)
    assert encrypted.step(["p00", "p01"], now=0.5) == []
    [again] = encrypted.step(["p00", "p01"], now=2.0)
    assert again.peer == "p01" and again.payload == ask.payload

    total = sum_ciphertexts(encrypted.context, [uploads["p00"], uploads["p01"]])
    sums = decrypt_limb_sums(ctx, total, length, cohort=2)
    payload, meta = encode_limb_sums(sums, cohort=2)
    meta["attempt"] = "a" * 16
    with pytest.raises(ProtocolError) as refused:
        encrypted.receive(_signed(Kind.AGGREGATE, "p02", 1, payload, meta))
    assert refused.value.reason is Reason.NOT_ASKED
    short, short_meta = encode_limb_sums(sums[:-2], cohort=2)
    with pytest.raises(ProtocolError, match="int64 tensor"):
        encrypted.receive(_signed(Kind.AGGREGATE, "p01", 1, short,
                                  short_meta | {"attempt": "a" * 16}))
    answer = _signed(Kind.AGGREGATE, "p01", 1, payload, meta)
    acks, arrived = encrypted.receive(answer)
    assert [(a.peer, a.kind) for a in acks] == [("p01", Kind.ACK)] and arrived
    assert np.array_equal(encrypted.masked_sum, words["p00"] + words["p01"])
    assert not encrypted.waiting and encrypted.step(["p00", "p01"], now=9.0) == []
    acks, arrived = encrypted.receive(answer)  # a re-send: acked, not used twice
    assert len(acks) == 1 and not arrived
    assert np.array_equal(join_limbs(sums), encrypted.masked_sum)
    events = [(e["event"], e.get("peer")) for e in read_journal(tmp_path / "journal.jsonl")]
    assert events == [("encrypted_sum", None), ("decrypt_requested", "p00"),
                      ("decrypt_requested", "p01"), ("accepted", "p01")]
