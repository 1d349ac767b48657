"""DP-SGD, the privacy ledger and the site policy in the participant agent, over real daemons."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import RDPAccountant

from daemon_helpers import Running, local_parts, make_consortium, tiny_dataset
from latentfl.cli import main
from latentfl.config import write_config
from latentfl.platform.coordinator import Coordinator, read_journal
from latentfl.platform.local import LocalConsortium, free_port
from latentfl.platform.participant import Agent, ParticipantConfig
from latentfl.privacy import PrivacyLedger, poisson_sample_rate, steps_per_round

IDS = ["p00", "p01", "p02"]
BATCH, MAX_STEPS, DELTA = 32, 4, 1e-5


@pytest.fixture(scope="module")
def parts():
    return local_parts(tiny_dataset(), 3)


def _opacus_epsilon(noise: float, sample_rate: float, steps: int) -> float:
    accountant = RDPAccountant()
    accountant.history = [(noise, sample_rate, steps)]
    return accountant.get_epsilon(DELTA)


def _private(consortium: LocalConsortium, pid: str, state, privacy: dict) -> ParticipantConfig:
    return consortium.participant_config(pid, state_dir=str(state), privacy=privacy)


def _run(consortium, parts, agents_configs, **coordinator) -> tuple[list, list[int]]:
    config = consortium.coordinator_config(**coordinator)
    coord = Running(Coordinator(config))
    agents = [Running(Agent(cfg, data=parts[i])) for i, cfg in enumerate(agents_configs)]
    assert coord.join(90) == 0
    codes = [a.join(20) for a in agents]
    return read_journal(config.state_dir / "journal.jsonl"), codes


def _updates(journal) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in journal:
        if e["event"] == "accepted" and e.get("kind") == "UPDATE":
            out.setdefault(e["peer"], []).append(e)
    return out


def test_reported_epsilon_matches_opacus_and_survives_a_restart(tmp_path, parts, capsys):
    """Each UPDATE reports Opacus's RDP epsilon (DP-SGD and weight noise); a restarted agent
    continues its ledger and noise; `privacy ledger --config` prints it."""
    consortium = make_consortium(tmp_path, IDS)
    dp_target = {"dp_sgd": {"enabled": True, "target_epsilon": 8.0, "planned_rounds": 2},
                 "policy": {"delta": DELTA}, "noise_seed": 1}
    dp_fixed = {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0}, "noise_seed": 2}
    weight_noise = {"weight_noise": {"enabled": True, "clip_norm": 5.0, "noise_multiplier": 2.0},
                    "noise_seed": 3}
    states = [tmp_path / f"site{i}" for i in range(3)]

    def configs():
        return [_private(consortium, "p00", states[0], dp_target),
                _private(consortium, "p01", states[1], dp_fixed),
                _private(consortium, "p02", states[2], weight_noise)]

    strategy = {"method": "fedavg", "model": {"name": "convnet",
                                              "options": {"width": 8, "depth": 1}},
                "local": {"epochs": 1, "batch_size": BATCH, "lr": 0.05, "max_steps": MAX_STEPS}}
    first, codes = _run(consortium, parts, configs(), rounds=1, strategy=strategy)
    assert codes == [0, 0, 0]
    # the restart: new agent objects, same state folders, a new session of one round
    consortium.endpoint = f"tcp://127.0.0.1:{free_port()}"
    second, codes = _run(consortium, parts, configs(), rounds=1, strategy=strategy,
                         state_dir=str(tmp_path / "state2"))
    assert codes == [0, 0, 0]
    for pid, i in (("p00", 0), ("p01", 1)):
        n = len(parts[i].y)
        q, steps = poisson_sample_rate(n, BATCH), steps_per_round(n, BATCH, 1, MAX_STEPS)
        reports = [_updates(first)[pid][0]["privacy"], _updates(second)[pid][0]["privacy"]]
        assert reports[0]["noise_multiplier"] == reports[1]["noise_multiplier"]  # resolved once
        noise = reports[0]["noise_multiplier"]
        for k, report in enumerate(reports, start=1):
            assert report["sample_rate"] == pytest.approx(q, rel=1e-12)
            assert report["dp_steps"] == k * steps
            assert report["epsilon"] == pytest.approx(_opacus_epsilon(noise, q, k * steps),
                                                      rel=1e-9)
        ledger = PrivacyLedger.load(states[i])
        assert [r.round for r in ledger.rows] == [1, 1] and ledger.total_steps == 2 * steps
    # the target epsilon was planned over both rounds, so two rounds spend (about) all of it
    assert _updates(second)["p00"][0]["privacy"]["epsilon"] == pytest.approx(8.0, abs=0.05)
    # weight noise: one Gaussian mechanism per upload, noise 2.0 on sensitivity 2 x clip
    for k, journal in enumerate((first, second), start=1):
        report = _updates(journal)["p02"][0]["privacy"]
        accountant = RDPAccountant()
        accountant.history = [(1.0, 1.0, k)]
        assert report["epsilon"] == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)
        assert report["dp_steps"] == 0
    assert [r.mechanism for r in PrivacyLedger.load(states[2]).rows] == ["weight-noise"] * 2

    toml = write_config(tmp_path / "p00.toml", consortium.participant_config(
        "p00", state_dir=states[0]))
    capsys.readouterr()
    assert main(["privacy", "ledger", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    assert "dp-sgd" in out and f"epsilon {PrivacyLedger.load(states[0]).epsilon():.4f}" in out


def test_task_past_the_budget_is_refused_journaled_and_the_agent_keeps_serving(tmp_path, parts):
    """Round 2 would pass p00's max_epsilon: it REJECTs naming budget_exceeded, the coordinator
    journals it and finishes with the others, and p00 serves to the end without spending."""
    consortium = make_consortium(tmp_path, IDS)
    n = len(parts[0].y)
    q, steps = poisson_sample_rate(n, BATCH), steps_per_round(n, BATCH, 1, MAX_STEPS)
    one, two = _opacus_epsilon(1.0, q, steps), _opacus_epsilon(1.0, q, 2 * steps)
    state = tmp_path / "site0"
    privacy = {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0},
               "policy": {"max_epsilon": (one + two) / 2}}
    configs = [_private(consortium, "p00", state, privacy),
               consortium.participant_config("p01"), consortium.participant_config("p02")]
    journal, codes = _run(consortium, parts, configs, rounds=2, min_participants=3)
    assert codes == [0, 0, 0]  # p00 was still serving when the session finished
    declined = [e for e in journal if e["event"] == "declined"]
    assert [(e["peer"], e["reason"], e["round"]) for e in declined] == [
        ("p00", "budget_exceeded", 2)]
    assert "max_epsilon" in declined[0]["detail"]
    closed = [e for e in journal if e["event"] == "round_closed"]
    assert [c["accepted"] for c in closed] == [IDS, ["p01", "p02"]]
    ledger = PrivacyLedger.load(state)
    assert len(ledger.rows) == 1 and ledger.epsilon() == pytest.approx(one, rel=1e-9)
    assert ledger.epsilon() <= (one + two) / 2 and math.isfinite(two)


def test_privacy_without_state_dir_is_refused(tmp_path):
    """DP-SGD or an epsilon cap without a state dir is a config error (the ledger needs disk)."""
    from latentfl.errors import ConfigError

    consortium = make_consortium(tmp_path, IDS)
    for privacy in ({"dp_sgd": {"enabled": True, "noise_multiplier": 1.0}},
                    {"policy": {"max_epsilon": 1.0}}):
        with pytest.raises(ConfigError, match="state_dir"):
            consortium.participant_config("p00", privacy=privacy)
