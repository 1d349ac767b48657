"""A site's [policy.tasks] through real daemons: the operator sees which rule declined."""

from __future__ import annotations

from daemon_helpers import Running, local_parts, make_consortium, tiny_dataset
from latentfl.platform.coordinator import Coordinator, collect_status, read_journal, render_text
from latentfl.platform.participant import Agent
from latentfl.platform.supervisor import wait_until


def test_a_task_outside_the_sites_approval_is_declined_and_status_names_the_rule(tmp_path):
    """The coordinator asks for lr 0.05, the site allows at most 0.01: the agent declines with
    training_out_of_bounds, the journal keeps the detail and `latentfl status` names the rule
    beside the site."""
    consortium = make_consortium(tmp_path, ["p00"])
    config = consortium.coordinator_config(min_participants=1, rounds=1)
    part = local_parts(tiny_dataset(n_train=60), 1)[0]
    coord = Running(Coordinator(config))
    agent = Running(Agent(consortium.participant_config(
        "p00", policy={"tasks": {"max_lr": 0.01}}), data=part))
    journal = config.state_dir / "journal.jsonl"
    try:
        wait_until(lambda: any(e["event"] == "declined" for e in read_journal(journal)), 60,
                   "the decline")
    finally:
        agent.stop()
        coord.stop()
    (declined,) = [e for e in read_journal(journal) if e["event"] == "declined"]
    assert declined["reason"] == "training_out_of_bounds" and "lr = 0.05" in declined["detail"]
    status = collect_status(config)
    assert status["participants"]["p00"]["declined_reasons"] == {"training_out_of_bounds": 1}
    assert any("declined 1x training_out_of_bounds" in line for line in render_text(status))
    assert not any(e["event"] == "accepted" and e.get("kind") == "update"
                   for e in read_journal(journal))
