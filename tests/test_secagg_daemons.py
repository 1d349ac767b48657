"""secagg through the daemons: real sockets, CURVE keys and roster signing keys, masked sums."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from daemon_helpers import (
    PARTITION,
    STRATEGY,
    Running,
    local_parts,
    make_consortium,
    simulate,
    start_agents,
    tiny_dataset,
)
from latentfl.config import from_dict
from latentfl.errors import ConfigError
from latentfl.platform.coordinator import Coordinator, StateStore, read_journal
from latentfl.platform.secagg_payloads import masked_vector
from latentfl.privacy.secagg import MAX_ERROR, dequantise
from latentfl.simulate import SimulationConfig, run_simulation

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


def _global(state_dir, round) -> dict[str, torch.Tensor]:
    ckpt = StateStore(state_dir).load_checkpoint(round)
    return {k.removeprefix("global."): v for k, v in ckpt.tensors.items()
            if k.startswith("global.")}


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
    final = _global(config.state_dir, 2)
    for name, value in reference.items():
        assert torch.allclose(final[name], value, atol=TOLERANCE, rtol=0), name

    journal = read_journal(config.state_dir / "journal.jsonl")
    kinds = [e.get("kind") for e in journal if e["event"] == "accepted"]
    assert kinds.count("MASKED_UPDATE") == 6
    assert "UPDATE" not in kinds and "ENCRYPTED_UPDATE" not in kinds
    unmasked = [e for e in journal if e["event"] == "secagg_unmasked"]
    assert [(e["round"], e["covers"], e["dropped"]) for e in unmasked] == [
        (1, IDS, []), (2, IDS, [])]
    # what the coordinator holds of one participant is uniform noise, not its weights
    for update, _ in StateStore(config.state_dir).load_updates(1):
        held = dequantise(masked_vector(update.weights), update.num_examples)
        assert np.median(np.abs(held)) > 1e3
    # it sent TASKs and the secagg steps only; no payload it sent is an upload it received
    assert {kind for _, kind, _ in sent} <= {"TASK", "ACK", "HEARTBEAT", "STATUS",
                                             "SECAGG_KEY_LIST", "SECAGG_SHARE_INBOX",
                                             "SECAGG_UNMASK"}


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
    """FedDGM with secagg is refused before anything starts, with the reason."""
    with pytest.raises(ConfigError, match="needs each participant's own weights, which secagg"):
        consortium.coordinator_config(aggregation=SECAGG, strategy={**STRATEGY,
                                                                    "method": "feddgm"})


def test_quantisation_bound_is_the_documented_one():
    """The stated per-weight error of the decoded mean is 2^-31."""
    assert MAX_ERROR == 2.0**-31
