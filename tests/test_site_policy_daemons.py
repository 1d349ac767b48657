"""A site's [policy.tasks] through real daemons: the operator sees which rule declined."""

from __future__ import annotations

import re

from daemon_helpers import TINY_FEDDGM, Running, local_parts, make_consortium, tiny_dataset
from latentfl.cli import main
from latentfl.config import write_config
from latentfl.platform.coordinator import Coordinator, collect_status, read_journal, render_text
from latentfl.platform.participant import Agent
from latentfl.platform.supervisor import wait_until


def _decline_of_one_site(tmp_path, tasks_policy: dict, **coordinator) -> tuple[dict, list, dict]:
    """One coordinator and one agent with ``[policy.tasks]`` = ``tasks_policy``, run until the
    agent declines: (the journal's declined event, the whole journal, the status)."""
    consortium = make_consortium(tmp_path, ["p00"])
    config = consortium.coordinator_config(min_participants=1, rounds=1, **coordinator)
    part = local_parts(tiny_dataset(n_train=60), 1)[0]
    coord = Running(Coordinator(config))
    agent = Running(Agent(consortium.participant_config(
        "p00", policy={"tasks": tasks_policy}), data=part))
    journal = config.state_dir / "journal.jsonl"
    try:
        wait_until(lambda: any(e["event"] == "declined" for e in read_journal(journal)), 60,
                   "the decline")
    finally:
        agent.stop()
        coord.stop()
    events = read_journal(journal)
    (declined,) = [e for e in events if e["event"] == "declined"]
    return declined, events, collect_status(config)


def test_a_task_outside_the_sites_approval_is_declined_and_status_names_the_rule(tmp_path):
    """The coordinator asks for lr 0.05, the site allows at most 0.01: the agent declines with
    training_out_of_bounds, the journal keeps the detail and `latentfl status` names the rule
    beside the site."""
    declined, events, status = _decline_of_one_site(tmp_path, {"max_lr": 0.01})
    assert declined["reason"] == "training_out_of_bounds" and "lr = 0.05" in declined["detail"]
    assert status["participants"]["p00"]["declined_reasons"] == {"training_out_of_bounds": 1}
    assert any("declined 1x training_out_of_bounds" in line for line in render_text(status))
    assert not any(e["event"] == "accepted" and e.get("kind") == "update" for e in events)


def test_a_site_allowing_only_fedavg_declines_a_feddgm_task_and_status_names_the_rule(
        tmp_path):
    """The TASK names the coordinator's method (feddgm, which distils the upload); a site whose
    [policy.tasks] methods = ["fedavg"] declines it with method_not_allowed before training,
    and the operator sees that rule in status."""
    declined, _, status = _decline_of_one_site(tmp_path, {"methods": ["fedavg"]},
                                               strategy=TINY_FEDDGM)
    assert declined["reason"] == "method_not_allowed"
    assert "method 'feddgm'; this site accepts fedavg" in declined["detail"]
    assert status["participants"]["p00"]["declined_reasons"] == {"method_not_allowed": 1}
    assert any("declined 1x method_not_allowed" in line for line in render_text(status))


def test_the_report_shows_each_sites_own_budget_and_what_it_spent(tmp_path, capsys):
    """Each agent states its [privacy.policy] max_epsilon in its HELLO; the coordinator
    journals it and `latentfl report` shows "budget X, spent Y", or "no budget set"."""
    consortium = make_consortium(tmp_path, ["p00", "p01"])
    config = consortium.coordinator_config(min_participants=2, rounds=1)
    parts = local_parts(tiny_dataset(n_train=120), 2)
    coord = Running(Coordinator(config))
    budgeted = consortium.participant_config(
        "p00", state_dir=tmp_path / "p00-state", privacy={
            "dp_sgd": {"enabled": True, "noise_multiplier": 1.0},
            "policy": {"max_epsilon": 50.0}})
    agents = [Running(Agent(budgeted, data=parts[0])),
              Running(Agent(consortium.participant_config("p01"), data=parts[1]))]
    try:
        assert coord.join(120) == 0
    finally:
        [a.stop() for a in agents]
        coord.stop()
    hellos = {e["peer"]: e for e in read_journal(config.state_dir / "journal.jsonl")
              if e["event"] == "accepted" and e.get("kind") == "HELLO"}
    assert hellos["p00"]["max_epsilon"] == 50.0 and hellos["p01"]["max_epsilon"] is None
    path = write_config(tmp_path / "coordinator.toml", config)
    assert main(["report", "--config", str(path), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    spent = re.search(r"p00: .*, budget 50\.00, spent (\d+\.\d\d)", out)
    assert spent and 0 < float(spent.group(1)) < 50, out
    assert re.search(r"p01: .*, no budget set, spent not reported", out), out
    html = (tmp_path / "rep" / "consortium_report.html").read_text()
    assert f"budget 50.00, spent {spent.group(1)}" in html and "no budget set" in html
