"""Audits in the platform: fetch own synthetic set, share aggregates, consortium report."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest
import torch

from daemon_helpers import MEAN, STD, TINY_FEDDGM, RawClient, Running, make_consortium
from latentfl.audits import load_model_file
from latentfl.cli import main
from latentfl.config import from_dict, write_config
from latentfl.data import load_dataset
from latentfl.distill import SyntheticSet
from latentfl.errors import ProtocolError
from latentfl.platform.cli.report import export_global_model
from latentfl.platform.coordinator import Coordinator, StateStore, read_journal, verify_journal
from latentfl.platform.local import LocalConsortium
from latentfl.platform.participant import Agent
from latentfl.platform.participant.audits.client import AuditClient, run_participant_audit
from latentfl.platform.protocol import Kind, pack_json
from latentfl.platform.supervisor import wait_until
from latentfl.strategies import StrategyConfig, build_strategy

IDS = ["p00", "p01", "p02"]
PARTITION = {"scheme": "dirichlet", "alpha": 0.5, "seed": 0, "min_size": 10}


def _pixels(value: float) -> torch.Tensor:
    """Ten normalised images whose pixels are all ``value`` (in [0, 1] units)."""
    return torch.full((10, 3, 32, 32), (value - MEAN[0]) / STD[0])


def _finished_session(consortium: LocalConsortium, values: dict[str, float], **overrides):
    """A coordinator config whose state holds a finished FedDGM session with these sets."""
    config = consortium.coordinator_config(strategy=TINY_FEDDGM, rounds=1, linger_s=60.0,
                                           **overrides)
    strategy = build_strategy(from_dict(StrategyConfig, TINY_FEDDGM))
    strategy.initialize(0)
    strategy.synthetic = {pid: SyntheticSet(_pixels(v), torch.arange(10), None, 0.01, ())
                          for pid, v in values.items()}
    tensors, meta = strategy.state_dict()
    StateStore(config.state_dir).save_checkpoint(1, tensors, {"round": 1, "strategy": meta})
    return config


@pytest.fixture
def consortium(tmp_path):
    return make_consortium(tmp_path, IDS)


@pytest.fixture
def lingering(consortium):
    """A coordinator serving a finished session: p00 and p01 have sets, p02 has none."""
    config = _finished_session(consortium, {"p00": 0.2, "p01": 0.8})
    coord = Running(Coordinator(config))
    yield config
    coord.stop()


def _aggregates(**changes) -> dict:
    verdict = {"metric": "nn_share", "title": "Nearest image is a training image",
               "value": "5 of 10 (50%)", "status": "pass", "p_value": 0.6, "alpha": 0.01,
               "numbers": {"count": 5, "n": 10, "share": 0.5}}
    return {"kind": "synthetic-audit", "flagged": False, "sizes": {"synthetic": 10},
            "verdicts": [verdict], **changes}


def test_fetch_returns_only_the_senders_own_synthetic_set(consortium, lingering):
    """p01 receives p01's images whatever it puts in the message; p02 (no set) gets REJECT."""
    with AuditClient(consortium.participant_config("p01"), timeout_s=10) as client:
        images, labels, meta = client.fetch_synthetic()
    assert images.shape == (10, 32, 32, 3) and images.dtype.name == "uint8"
    assert (images == round(0.8 * 255)).all()  # p01's value, never p00's 0.2
    assert labels.tolist() == list(range(10)) and meta["synthetic_round"] == 1

    raw = RawClient(consortium, consortium.identity("p01"))
    try:  # asking for someone else's set is not expressible: extra fields change nothing
        raw.send(raw.frames(Kind.FETCH_SYNTHETIC, 0, payload=pack_json({"participant": "p00"}),
                            meta={"participant": "p00"}))
        reply = raw.recv(10, kind=Kind.SYNTHETIC)
        assert reply is not None and reply.header.meta["count"] == 10
    finally:
        raw.close()
    with AuditClient(consortium.participant_config("p00"), timeout_s=10) as client:
        assert (client.fetch_synthetic()[0] == round(0.2 * 255)).all()
    with (AuditClient(consortium.participant_config("p02"), timeout_s=10) as client,
          pytest.raises(ProtocolError) as refused):
        client.fetch_synthetic()
    assert refused.value.reason == "no-synthetic"
    entries = read_journal(lingering.state_dir / "journal.jsonl")
    fetched = [e["peer"] for e in entries if e.get("kind") == "FETCH_SYNTHETIC"
               and e["event"] == "accepted"]
    assert fetched == ["p01", "p01", "p00"]
    assert any(e["event"] == "refused" and e.get("reason") == "no-synthetic" for e in entries)


@pytest.mark.parametrize("payload, reason", [
    (pack_json(_aggregates(images=[[0, 1, 2]])), "malformed"),
    (pack_json(_aggregates(verdicts=[{**_aggregates()["verdicts"][0],
                                      "numbers": {"auc": "0.5"}}])), "malformed"),
    (pack_json(_aggregates(verdicts=[{**_aggregates()["verdicts"][0],
                                      "distances": [0.1, 0.2]}])), "malformed"),
    (pack_json(_aggregates(sizes={"synthetic": "x" * 20000})), "too-large"),
    (b"not json", "malformed"),
])
def test_bad_aggregates_are_refused_and_journaled(consortium, lingering, payload, reason):
    """Unknown keys, non-numbers, oversized or non-JSON aggregates: REJECT, journal, serve on."""
    with AuditClient(consortium.participant_config("p00"), timeout_s=10) as client:
        with pytest.raises(ProtocolError) as refused:
            client.request(Kind.AUDIT_REPORT, payload=payload, reply=Kind.ACK)
        assert refused.value.reason == reason
        assert client.fetch_synthetic()[0].shape[0] == 10  # still serving
    assert not (lingering.state_dir / "audits" / "synthetic-audit" / "p00.json").exists()
    entries = read_journal(lingering.state_dir / "journal.jsonl")
    assert any(e["event"] == "refused" and e.get("kind") == "AUDIT_REPORT"
               and e.get("reason") == reason for e in entries)


def test_shared_aggregates_land_in_state_and_report(consortium, lingering, tmp_path):
    """A valid AUDIT_REPORT is ACKed, stored, journaled; `latentfl report` lists everyone."""
    with AuditClient(consortium.participant_config("p01"), timeout_s=10) as client:
        digest = client.share(_aggregates(flagged=True, verdicts=[
            {**_aggregates()["verdicts"][0], "status": "flag", "p_value": 1e-9}]))
    stored = json.loads((lingering.state_dir / "audits" / "synthetic-audit" / "p01.json").read_text())
    assert stored["sha256"] == digest and stored["aggregates"]["flagged"] is True
    entries = read_journal(lingering.state_dir / "journal.jsonl")
    assert any(e.get("kind") == "AUDIT_REPORT" and e["event"] == "accepted"
               and e["peer"] == "p01" for e in entries)

    cfg_file = write_config(tmp_path / "coordinator.toml", lingering)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", "--config", str(cfg_file), "--out", str(tmp_path / "rep")]) == 0
    report = json.loads((tmp_path / "rep" / "consortium_report.json").read_text())
    assert [p["participant"] for p in report["participants"]] == IDS
    assert "p01" in report["flagged"]
    html = (tmp_path / "rep" / "consortium_report.html").read_text()
    assert all(pid in html for pid in IDS) and "synthetic-audit flagged" in html


def test_audit_client_leaves_the_agents_connection_alone(consortium, tmp_path):
    """An audit client with an agent's keys does not steal that agent's TASKs."""
    config = consortium.coordinator_config(min_participants=2, rounds=1)
    coord = Running(Coordinator(config))
    first = RawClient(consortium, consortium.identity("p00"))
    second = RawClient(consortium, consortium.identity("p01"))
    try:
        first.send(first.frames(Kind.HELLO, 0, payload=pack_json({"num_examples": 50})))
        wait_until(lambda: "p00" in coord.daemon.peers, 10, "p00 online")
        with (AuditClient(consortium.participant_config("p00"), timeout_s=10) as client,
              pytest.raises(ProtocolError) as refused):
            client.fetch_synthetic()  # FedAvg, round 0: nothing to fetch
        assert refused.value.reason == "no-synthetic"
        second.send(second.frames(Kind.HELLO, 0, payload=pack_json({"num_examples": 50})))
        assert first.recv(15, kind=Kind.TASK) is not None  # reached the agent's connection
        assert second.recv(15, kind=Kind.TASK) is not None
    finally:
        first.close()
        second.close()
        coord.stop()


def test_feddgm_through_daemons_then_audit_and_report(consortium, tmp_path):
    """Tiny FedDGM over the daemons, p00 audits its own set and shares, the report shows it."""
    config = consortium.coordinator_config(strategy=TINY_FEDDGM, rounds=1, min_participants=2,
                                           linger_s=120.0)
    coord = Running(Coordinator(config))
    parts = {"clients": 2, **PARTITION}
    configs = {pid: consortium.participant_config(
        pid, partition={**parts, "index": i}, state_dir=str(tmp_path / pid))
        for i, pid in enumerate(IDS[:2])}
    agents = [Running(Agent(c)) for c in configs.values()]
    wait_until(lambda: coord.daemon.rounds.phase == "finished", 150, "the FedDGM round")

    outcome = run_participant_audit(configs["p00"], out_dir=tmp_path / "audit-p00", share=True,
                                    max_images=300)
    assert outcome.html.exists() and outcome.json.exists() and outcome.images == 10
    shared = json.loads((config.state_dir / "audits" / "synthetic-audit" / "p00.json").read_text())["aggregates"]
    assert all(set(v) <= {"metric", "title", "value", "status", "p_value", "alpha", "numbers"}
               for v in shared["verdicts"])
    coord.stop()
    for agent in agents:
        agent.stop()
    assert verify_journal(config.state_dir / "journal.jsonl") > 0
    cfg_file = write_config(tmp_path / "coordinator.toml", config)
    with redirect_stdout(io.StringIO()):
        assert main(["report", "--config", str(cfg_file), "--out", str(tmp_path / "rep")]) == 0
    report = json.loads((tmp_path / "rep" / "consortium_report.json").read_text())
    by_id = {p["participant"]: p for p in report["participants"]}
    assert "synthetic-audit" in by_id["p00"]["audits"] and by_id["p01"]["audits"] == {}
    model, spec = load_model_file(export_global_model(config, tmp_path / "global.safetensors"))
    assert spec.model == "convnet" and tuple(spec.mean) == MEAN
    assert sum(p.numel() for p in model.parameters()) > 0


def test_report_shows_each_participants_dp_ledger_from_its_updates(consortium, tmp_path):
    """Ledger fields journaled from signed UPDATE headers appear; missing ones say so."""
    from latentfl.platform.coordinator import Journal

    config = consortium.coordinator_config(aggregation={"mode": "plain"})
    journal = Journal(config.state_dir / "journal.jsonl")
    journal.append("accepted", kind="UPDATE", peer="p00", round=1, privacy={
        "epsilon": 0.5, "delta": 1e-5, "noise_multiplier": 1.1, "dp_steps": 10})
    journal.append("accepted", kind="UPDATE", peer="p00", round=2, privacy={
        "epsilon": 0.9, "delta": 1e-5, "noise_multiplier": 1.1, "dp_steps": 20})
    journal.append("accepted", kind="UPDATE", peer="p01", round=2, privacy={})
    journal.close()
    cfg_file = write_config(tmp_path / "coordinator.toml", config)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["report", "--config", str(cfg_file), "--out", str(tmp_path / "rep")]) == 0
    report = json.loads((tmp_path / "rep" / "consortium_report.json").read_text())
    by_id = {p["participant"]: p for p in report["participants"]}
    assert by_id["p00"]["ledger"] == {"epsilon": 0.9, "delta": 1e-5, "noise_multiplier": 1.1,
                                      "steps": 20, "round": 2}
    assert by_id["p00"]["flags"] == [] and by_id["p01"]["ledger"] is None
    assert ("p00: plain (the coordinator sees each site's update), 2 updates, budget not "
            "reported, spent 0.90") in out.getvalue()
    html = (tmp_path / "rep" / "consortium_report.html").read_text()
    assert "epsilon 0.90" in html and "not reported" in html


def _export(consortium, strategy_table: dict, out, **overrides):
    """Save an initialised ``strategy_table`` session as round 1, then export its global model."""
    config = consortium.coordinator_config(strategy=strategy_table, **overrides)
    strategy = build_strategy(from_dict(StrategyConfig, strategy_table))
    strategy.initialize(0)
    tensors, meta = strategy.state_dict()
    StateStore(config.state_dir).save_checkpoint(1, tensors, {"round": 1, "strategy": meta})
    return strategy, load_model_file(export_global_model(config, out))


def test_export_writes_feddgms_global_model_with_the_stats_it_renders_to(consortium, tmp_path):
    """FedDGM exports its global model (not the surrogate) normalised with its configured stats."""
    table = {**TINY_FEDDGM, "feddgm": {**TINY_FEDDGM["feddgm"], "global_model": {
        "name": "convnet", "num_classes": 10, "options": {"width": 4, "depth": 1}}}}
    strategy, (model, spec) = _export(consortium, table, tmp_path / "global.safetensors")
    assert spec.model == "convnet" and spec.options == {"width": 4, "depth": 1}
    assert tuple(spec.mean) == MEAN and tuple(spec.std) == STD
    expected = strategy.evaluation_model().state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_export_of_a_method_without_fixed_stats_takes_the_test_datas(consortium, tmp_path):
    """FedAvg exports the participants' architecture with the test data's channel statistics."""
    table = {"method": "fedavg", "model": {"name": "convnet", "options": {"width": 8, "depth": 1}}}
    _, (_, spec) = _export(consortium, table, tmp_path / "global.safetensors",
                           test_data="builtin:cifar10-mini")
    stats = load_dataset("builtin:cifar10-mini")
    assert spec.model == "convnet" and spec.options == {"width": 8, "depth": 1}
    assert tuple(spec.mean) == tuple(stats.mean) and tuple(spec.std) == tuple(stats.std)


def test_holdout_is_class_matched_to_the_training_part():
    """A skewed site's holdout keeps its class mix, so the share check compares like with like."""
    import numpy as np

    from latentfl.data import ImageSet
    from latentfl.platform.participant.audits.client import class_matched

    def images(labels):
        y = np.asarray(labels, dtype=np.int64)
        return ImageSet(x=np.zeros((len(y), 4, 4, 3), np.uint8), y=y, classes=("a", "b", "c"))

    train = images([0] * 30 + [1] * 10)
    holdout = images([0] * 20 + [1] * 20 + [2] * 20)
    matched = class_matched(holdout, train, seed=0)
    counts = np.bincount(matched.y, minlength=3)
    assert counts[0] == 20 and counts[2] == 0  # as many as class 0 allows; no class the site lacks
    assert abs(counts[0] / counts[1] - 3.0) < 0.5  # 3:1 like the training part
