"""secagg through the daemons: real sockets, CURVE keys and roster signing keys, masked sums."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest
import torch

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
    run_to_the_end,
    simulate,
    start_agents,
    tiny_dataset,
)
from latentfl.config import from_dict
from latentfl.errors import ConfigError
from latentfl.platform.coordinator import (
    Coordinator,
    StateStore,
    collect_status,
    read_journal,
    render_html,
    render_text,
)
from latentfl.platform.crypto import load_roster
from latentfl.platform.participant.masked_round import MaskedRound
from latentfl.platform.protocol import Kind, pack_json
from latentfl.platform.wire.secagg import masked_vector
from latentfl.privacy.secagg import MAX_ERROR, dequantise
from latentfl.simulate import SimulationConfig, run_simulation
from latentfl.strategies import build_strategy, run_task

IDS = ["p00", "p01", "p02"]
SECAGG = {"mode": "secagg", "min_cohort": 2, "phase_deadline": 20.0}
# the decoded mean is exact to 2^-31 per weight; the float32 weights and the simulator's own
# float32 mean add rounding of the same order, far below 1e-5
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def dataset():
    return tiny_dataset()


@pytest.fixture
def consortium(tmp_path):
    return make_consortium(tmp_path, IDS)


def _sent_kinds(coordinator: Coordinator) -> list[tuple[str, str, bytes]]:
    sent: list[tuple[str, str, bytes]] = []
    coordinator.send_observers.append(
        lambda pid, frames: sent.append((pid, json.loads(frames[0])["kind"], bytes(frames[2]))))
    return sent


def test_masked_fedavg_equals_the_plaintext_simulator(consortium, dataset):
    """3 agents, 2 secagg rounds: the unmasked mean equals the plaintext simulator's within the
    quantisation error; the coordinator stored, journaled and sent only masked words and sums."""
    config = consortium.coordinator_config(aggregation=SECAGG)
    coordinator = Coordinator(config)
    sent = _sent_kinds(coordinator)
    coord = Running(coordinator)
    agents = start_agents(consortium, local_parts(dataset, 3), IDS)
    assert coord.join(120) == 0
    assert [a.join(20) for a in agents] == [0, 0, 0]

    reference = simulate(dataset, 3, 2).strategy.global_weights()
    final = checkpoint_global(config.state_dir, 2)
    for name, value in reference.items():
        assert torch.allclose(final[name], value, atol=TOLERANCE, rtol=0), name

    journal = read_journal(config.state_dir / "journal.jsonl")
    kinds = [e.get("kind") for e in journal if e["event"] == "accepted"]
    assert kinds.count("MASKED_UPDATE") == 6
    assert "UPDATE" not in kinds and "ENCRYPTED_UPDATE" not in kinds
    unmasked = [e for e in journal if e["event"] == "secagg_unmasked"]
    assert [(e["round"], e["covers"], e["dropped"]) for e in unmasked] == [
        (1, IDS, []), (2, IDS, [])]
    # status counts a masked upload as an update, as it counts plain and ckks ones
    rows = collect_status(config)["participants"]
    assert {pid: (rows[pid]["accepted"], len(rows[pid]["rounds"])) for pid in IDS} == {
        pid: (2, 2) for pid in IDS}
    # what the coordinator holds of one participant is uniform noise, not its weights
    for update, _ in StateStore(config.state_dir).load_updates(1):
        held = dequantise(masked_vector(update.weights), update.num_examples)
        assert np.median(np.abs(held)) > 1e3
    # it sent TASKs and the secagg steps only; no payload it sent is an upload it received
    assert {kind for _, kind, _ in sent} <= {"TASK", "ACK", "HEARTBEAT", "STATUS",
                                             "SECAGG_KEY_LIST", "SECAGG_SHARE_INBOX",
                                             "SECAGG_SURVIVORS", "SECAGG_UNMASK"}


def test_masked_fednova_equals_the_plaintext_simulator(consortium, dataset):
    """FedNova under secagg: participants upload step-normalised weights, the coordinator
    unmasks their mean and applies tau_eff from the reported steps; equal to the simulator."""
    strategy = {**STRATEGY, "method": "fednova",
                "local": {**STRATEGY["local"], "max_steps": 6, "momentum": 0.5}}
    config = consortium.coordinator_config(aggregation=SECAGG, strategy=strategy, rounds=1)
    coord = Running(Coordinator(config))
    agents = start_agents(consortium, local_parts(dataset, 3), IDS)
    assert coord.join(120) == 0
    assert [a.join(20) for a in agents] == [0, 0, 0]
    sim = run_simulation(from_dict(SimulationConfig, {
        "participants": 3, "rounds": 1, "seed": 0, "device": "cpu",
        "partition": dataclasses.asdict(PARTITION), "strategy": strategy}), dataset=dataset)
    steps = {u.num_steps for u, _ in StateStore(config.state_dir).load_updates(1)}
    assert len(steps) > 1  # unequal local steps, so FedNova differs from FedAvg here
    final = checkpoint_global(config.state_dir, 1)
    for name, value in sim.strategy.global_weights().items():
        assert torch.allclose(final[name], value, atol=TOLERANCE, rtol=0), name


def test_masked_dynafed_equals_the_plaintext_simulator(consortium, dataset):
    """DynaFed under secagg: its trajectory of unmasked aggregates equals the plaintext
    simulator's within the quantisation error."""
    strategy = {**STRATEGY, "method": "dynafed",
                "dynafed": {"trajectory_length": 2, "ipc": 1, "syn_steps": 2, "iterations": 2,
                            "augment": False, "finetune_steps": 2, "finetune_augment": False,
                            "device": "cpu"}}
    config = consortium.coordinator_config(aggregation=SECAGG, strategy=strategy)
    coord = Running(Coordinator(config))
    agents = start_agents(consortium, local_parts(dataset, 3), IDS)
    assert coord.join(120) == 0
    assert [a.join(20) for a in agents] == [0, 0, 0]
    sim = run_simulation(from_dict(SimulationConfig, {
        "participants": 3, "rounds": 2, "seed": 0, "device": "cpu",
        "partition": dataclasses.asdict(PARTITION), "strategy": strategy}), dataset=dataset)
    ckpt = StateStore(config.state_dir).load_checkpoint(2)
    reference = torch.stack(sim.strategy.trajectory)
    assert torch.allclose(ckpt.tensors["trajectory"], reference, atol=TOLERANCE, rtol=0)
    assert ckpt.meta["strategy"]["synthesised"] is True


def test_methods_that_need_individual_weights_refuse_secagg(consortium):
    """FedDGM with secagg is refused before anything starts, with the reason (FedNova runs)."""
    with pytest.raises(ConfigError, match="needs each participant's own weights, which secagg"):
        consortium.coordinator_config(aggregation=SECAGG, strategy={**STRATEGY,
                                                                    "method": "feddgm"})


def test_quantisation_bound_is_the_documented_one():
    """The stated per-weight error of the decoded mean is 2^-31."""
    assert MAX_ERROR == 2.0**-31


def _drop_after_sharing(client: RawClient, roster) -> None:
    """A hand-driven site that runs the real secagg glue up to its shares, then vanishes."""
    client.send(client.frames(Kind.HELLO, 0, pack_json({"num_examples": 50})))
    task = client.recv(timeout=30.0, kind=Kind.TASK)
    assert task is not None
    masked = MaskedRound(task, pid=client.identity.id, session=SESSION,
                         signing_key=client.identity.signing_key,
                         verify_keys=load_roster(roster).verify_keys())
    for reply in (masked.keys,
                  lambda: masked.on_key_list(client.recv(timeout=30.0,
                                                         kind=Kind.SECAGG_KEY_LIST))):
        kind, payload, meta = reply()
        client.send(client.frames(kind, task.header.round, payload, meta))
    assert client.recv(timeout=30.0, kind=Kind.SECAGG_SHARE_INBOX) is not None
    client.close()


def test_a_site_dropping_after_sharing_is_unmasked_from_the_others_shares(tmp_path, dataset):
    """p03 advertises and shares, then drops: the survivors' shares rebuild its mask key and the
    unmasked sum equals the weighted mean of the three uploads computed here independently."""
    consortium = make_consortium(tmp_path, IDS + ["p03"])
    config = consortium.coordinator_config(aggregation=SECAGG, rounds=1, min_participants=4,
                                           quorum=0.75)
    coord = Running(Coordinator(config))
    dropper = RawClient(consortium, consortium.identity("p03"))
    parts = local_parts(dataset, 4)
    agents = start_agents(consortium, parts[:3], IDS)
    _drop_after_sharing(dropper, consortium.roster)
    assert coord.join(120) == 0
    [a.stop() for a in agents]

    journal = read_journal(config.state_dir / "journal.jsonl")
    unmasked = [e for e in journal if e["event"] == "secagg_unmasked"]
    assert [(e["covers"], e["dropped"]) for e in unmasked] == [(IDS, ["p03"])]
    strategy = build_strategy(config.strategy)
    strategy.initialize(config.seed)
    tasks = strategy.configure_round(1, IDS + ["p03"])
    updates = [run_task(tasks[pid], strategy.model_spec, parts[i].x, parts[i].y, participant=pid)
               for i, pid in enumerate(IDS)]
    strategy.aggregate_round(1, updates)
    final = checkpoint_global(config.state_dir, 1)
    for name, value in strategy.global_weights().items():
        assert torch.allclose(final[name], value, atol=TOLERANCE, rtol=0), name


def test_too_few_survivors_abandon_the_round_without_unmasking(tmp_path):
    """Two of three sites vanish after sharing: below min_cohort the round is abandoned with
    a journal line and nothing is unmasked."""
    consortium = make_consortium(tmp_path, IDS)
    config = consortium.coordinator_config(aggregation=SECAGG, rounds=1, min_participants=3,
                                           round_deadline=6.0)
    coordinator = Coordinator(config)
    coord = Running(coordinator)
    clients = [RawClient(consortium, consortium.identity(pid)) for pid in IDS]
    threads = [threading.Thread(target=_drop_after_sharing, args=(c, consortium.roster))
               for c in clients]
    events = events_after_abandonment(threads, coord, config.state_dir / "journal.jsonl")
    assert "secagg_shares" in events and "round_abandoned" in events
    assert "secagg_unmasked" not in events and "secagg_unmask_requested" not in events


def test_a_round_every_site_already_uploaded_for_is_skipped_not_replanned_in_a_loop(tmp_path,
                                                                                    dataset):
    """Both sites upload their masked update, the round is abandoned (min_updates 3 not met) and
    planned again; both decline the new attempt (secagg_already_uploaded) once, and the round is
    aborted with the reason instead of being planned again and again."""
    consortium = make_consortium(tmp_path, IDS)
    config = consortium.coordinator_config(aggregation=SECAGG, rounds=1, min_participants=2,
                                           min_updates=3, round_deadline=20.0)
    coord = Running(Coordinator(config))
    journal = run_to_the_end(coord, start_agents(consortium, local_parts(dataset, 3)[:2],
                                                 IDS[:2]), config.state_dir / "journal.jsonl", 180)
    opened = [e for e in journal if e["event"] == "round_opened"]
    declined = [e for e in journal if e["event"] == "declined"]
    assert len(opened) == 2 and len(declined) == 2, [e["event"] for e in journal]
    assert {e["reason"] for e in declined} == {"secagg_already_uploaded"}
    aborted = [e for e in journal if e["event"] == "round_aborted"]
    assert len(aborted) == 1 and "already uploaded a masked update" in aborted[0]["reason"]
    status = collect_status(config)  # the aborted round says so in text and HTML
    assert status["history"][0]["aborted"] is True
    assert any(line.rstrip().endswith("aborted: nothing aggregated")
               for line in render_text(status))
    assert "<td>aborted: nothing aggregated</td>" in render_html(status)
    assert not any(e["event"] == "secagg_unmasked" for e in journal)
