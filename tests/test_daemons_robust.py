"""A robust rule on real daemons: what it set aside is journaled, shown in status and reported."""

from __future__ import annotations

import dataclasses
import io
import json
from contextlib import redirect_stdout

import pytest
import torch

from daemon_helpers import (
    PARTITION,
    STRATEGY,
    Running,
    checkpoint_global,
    local_parts,
    make_consortium,
    start_agents,
    tiny_dataset,
)
from latentfl.cli import main
from latentfl.config import from_dict, write_config
from latentfl.errors import ConfigError
from latentfl.platform.coordinator import Coordinator, read_journal, verify_journal
from latentfl.simulate import SimulationConfig, run_simulation

IDS = ["p00", "p01", "p02"]
#: clip every update to the round's median norm: with three sites the longest is always clipped
ROBUST = {**STRATEGY, "robust": {"rule": "norm_bound", "clip_multiple": 1.0}}


def test_set_aside_update_is_journaled_shown_in_status_and_reported(tmp_path):
    """norm_bound on 3 agents: the clipped update is journaled with rule, score and threshold,
    listed by `latentfl status` (text and HTML) and counted in the consortium report; the
    daemons' global model equals the simulator's under the same rule."""
    dataset = tiny_dataset()
    consortium = make_consortium(tmp_path / "c", IDS)
    config = consortium.coordinator_config(rounds=1, strategy=ROBUST)
    coord = Running(Coordinator(config))
    agents = start_agents(consortium, local_parts(dataset, 3), IDS)
    try:
        assert coord.join(90) == 0
        for agent in agents:
            assert agent.join(20) == 0
    finally:
        for running in (*agents, coord):
            running.stop()
    journal = config.state_dir / "journal.jsonl"
    assert verify_journal(journal) > 0
    aside = [e for e in read_journal(journal) if e["event"] == "set_aside"]
    assert len(aside) >= 1
    entry = aside[0]
    assert entry["rule"] == "norm_bound" and entry["action"] == "clipped"
    assert entry["peer"] in IDS and entry["round"] == 1 and entry["score"] > entry["threshold"]

    sim = from_dict(SimulationConfig, {"participants": 3, "rounds": 1, "seed": 0,
                                       "device": "cpu", "partition": dataclasses.asdict(PARTITION),
                                       "strategy": ROBUST})
    reference = run_simulation(sim, dataset=dataset)
    assert [s["participant"] for s in reference.history[0].set_aside] == \
        [e["peer"] for e in aside]
    final = checkpoint_global(config.state_dir, 1)
    for name, value in reference.strategy.global_weights().items():
        assert torch.allclose(final[name], value, atol=1e-6, rtol=0), name

    cfg_file = write_config(tmp_path / "coordinator.toml", config)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", "--config", str(cfg_file)]) == 0
        assert main(["status", "--config", str(cfg_file), "--html",
                     str(tmp_path / "status.html")]) == 0
        assert main(["report", "--config", str(cfg_file), "--out", str(tmp_path / "rep")]) == 0
    text = out.getvalue()
    assert "updates set aside" in text and f"{entry['peer']} set aside by norm_bound" in text
    html = (tmp_path / "status.html").read_text()
    assert "Updates set aside" in html and "norm_bound" in html
    report = json.loads((tmp_path / "rep" / "consortium_report.json").read_text())
    site = next(p for p in report["participants"] if p["participant"] == entry["peer"])
    assert site["set_aside"][0]["round"] == 1 and site["set_aside"][0]["count"] == 1
    assert any("set aside by the robustness defence" in f for f in site["flags"])


@pytest.mark.parametrize("mode", ["secagg", "ckks"])
def test_masked_modes_refuse_per_update_rules(tmp_path, mode):
    """secagg/ckks refuse a per-update rule in one sentence and accept a fixed norm bound."""
    consortium = make_consortium(tmp_path, IDS)
    with pytest.raises(ConfigError, match="hides each update"):
        consortium.coordinator_config(aggregation={"mode": mode},
                                      strategy={**STRATEGY, "robust": {"rule": "median"}})
    config = consortium.coordinator_config(
        aggregation={"mode": mode},
        strategy={**STRATEGY, "robust": {"rule": "norm_bound", "clip_norm": 2.0}})
    assert config.strategy.robust.clip_norm == 2.0


def test_min_updates_must_cover_the_rule(tmp_path):
    """Krum with f = 1 needs 5 updates a round: min_updates below that is refused."""
    consortium = make_consortium(tmp_path, IDS)
    with pytest.raises(ConfigError, match="min_updates = 1 is below the 5 updates"):
        consortium.coordinator_config(strategy={**STRATEGY, "robust": {"rule": "krum", "f": 1}})
