"""Privacy accounting, the participant's ledger, site policy and weight noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from latentfl.config import from_dict
from latentfl.errors import ConfigError, PrivacyError, StateError
from latentfl.privacy import (
    PlannedTask,
    PrivacyLedger,
    SitePolicy,
    check_task,
    clip_and_noise,
    epsilon_for,
    noise_multiplier_for,
    plan_dp_sgd,
    poisson_sample_rate,
    weight_noise_epsilon,
    weight_noise_multiplier_for,
)
from latentfl.privacy.ledger import LEDGER_FILE

DELTA = 1e-5


def _opacus_epsilon(entries: list[tuple[float, float, int]], delta: float = DELTA) -> float:
    """Epsilon from Opacus's own RDPAccountant, stepped one step at a time."""
    acc = RDPAccountant()
    for sigma, q, steps in entries:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta=delta)


def _spend(ledger: PrivacyLedger, round_: int, steps: int, sigma=1.1, q=0.02, clip=1.0) -> None:
    ledger.start_round(round_, noise_multiplier=sigma, sample_rate=q, max_grad_norm=clip)
    for _ in range(steps):
        ledger.record_step()
    ledger.save()


def test_poisson_sample_rate_follows_opacus_loader_rule():
    """The sample rate is 1 / number of batches, as Opacus's DPDataLoader sets it."""
    assert poisson_sample_rate(5000, 64) == pytest.approx(1 / 79)
    assert poisson_sample_rate(10, 64) == 1.0


def test_noise_for_target_epsilon_stays_within_target_over_whole_run():
    """The derived noise keeps the whole planned run at or under the target epsilon."""
    plan = plan_dp_sgd(
        num_examples=2000, batch_size=50, epochs=2, rounds=5, delta=DELTA, target_epsilon=4.0
    )
    assert plan.total_steps == 5 * 2 * 40
    assert plan.epsilons[-1] <= 4.0
    assert plan.epsilons[-1] > 3.9  # not wastefully noisy
    assert list(plan.epsilons) == sorted(plan.epsilons)
    assert plan.epsilons[-1] == pytest.approx(
        _opacus_epsilon([(plan.noise_multiplier, plan.sample_rate, plan.total_steps)])
    )
    one_round = noise_multiplier_for(4.0, DELTA, plan.sample_rate, plan.steps_per_round)
    assert one_round < plan.noise_multiplier  # planning per round would under-noise the run


def test_impossible_budget_is_a_privacy_error():
    """A target no noise multiplier can reach is refused with rule budget_too_low."""
    with pytest.raises(PrivacyError) as err:
        noise_multiplier_for(1e-9, DELTA, 1.0, 100_000)
    assert err.value.rule == "budget_too_low"


def test_ledger_epsilon_equals_opacus_rdp_accountant(tmp_path):
    """The ledger's epsilon is Opacus's RDPAccountant's for the same noise, rate and steps."""
    ledger = PrivacyLedger.open(tmp_path, delta=DELTA)
    _spend(ledger, 1, 30, sigma=1.1, q=0.02)
    _spend(ledger, 2, 20, sigma=0.9, q=0.05)
    expected = _opacus_epsilon([(1.1, 0.02, 30), (0.9, 0.05, 20)])
    assert ledger.epsilon() == pytest.approx(expected, rel=1e-12)
    assert ledger.rows[-1].epsilon_after == pytest.approx(expected, rel=1e-12)
    assert ledger.rows[0].epsilon_after == pytest.approx(_opacus_epsilon([(1.1, 0.02, 30)]))
    assert ledger.total_steps == 50


def test_reloaded_ledger_continues_spending(tmp_path):
    """After a restart the ledger reloads its steps, and new steps add to them."""
    first = PrivacyLedger.open(tmp_path, delta=DELTA)
    _spend(first, 1, 15)
    eps_1 = first.epsilon()
    again = PrivacyLedger.open(tmp_path, delta=DELTA)
    assert again.total_steps == 15 and again.epsilon() == pytest.approx(eps_1)
    _spend(again, 2, 10)
    third = PrivacyLedger.load(tmp_path)
    assert third.total_steps == 25
    assert [r.round for r in third.rows] == [1, 2]
    assert third.epsilon() > eps_1
    assert third.epsilon() == pytest.approx(_opacus_epsilon([(1.1, 0.02, 25)]))
    assert not [p for p in tmp_path.iterdir() if p.name != LEDGER_FILE]  # no temp files left


def test_ledger_refuses_other_delta_and_corrupt_files(tmp_path):
    """A ledger kept at another delta, or a corrupt one, is refused loudly."""
    _spend(PrivacyLedger.open(tmp_path, delta=DELTA), 1, 3)
    with pytest.raises(ConfigError, match="delta"):
        PrivacyLedger.open(tmp_path, delta=1e-6)
    data = json.loads((tmp_path / LEDGER_FILE).read_text())
    data["history"][0][2] = 99
    (tmp_path / LEDGER_FILE).write_text(json.dumps(data))
    with pytest.raises(StateError, match="different numbers of steps"):
        PrivacyLedger.load(tmp_path)
    with pytest.raises(StateError, match="does not exist"):
        PrivacyLedger.load(tmp_path / "nowhere")


def test_check_task_refuses_past_budget_with_rule(tmp_path):
    """A task that would pass max_epsilon is refused with rule budget_exceeded."""
    ledger = PrivacyLedger.open(tmp_path, delta=DELTA)
    _spend(ledger, 1, 100)
    spent = ledger.epsilon()
    policy = SitePolicy(max_epsilon=spent + 0.05, delta=DELTA)
    small = PlannedTask(mode="plain", noise_multiplier=1.1, sample_rate=0.02, steps=1)
    check_task(policy, ledger, small)  # fits
    big = PlannedTask(mode="plain", noise_multiplier=1.1, sample_rate=0.02, steps=200)
    with pytest.raises(PrivacyError) as err:
        check_task(policy, ledger, big)
    assert err.value.rule == "budget_exceeded"
    assert "max_epsilon" in str(err.value)
    no_dp = PlannedTask(mode="plain", noise_multiplier=None, sample_rate=0.02, steps=1)
    with pytest.raises(PrivacyError, match="unbounded") as err:
        check_task(policy, ledger, no_dp)
    assert err.value.rule == "budget_exceeded"


def test_check_task_rules_for_modes_and_noise(tmp_path):
    """Mode, encryption and minimum-noise rules are each named in the refusal."""
    ledger = PrivacyLedger.open(tmp_path, delta=DELTA)
    task = PlannedTask(mode="plain", noise_multiplier=0.5, sample_rate=0.1, steps=5)
    cases = [
        (SitePolicy(allowed_modes=("ckks",)), "mode_not_allowed"),
        (SitePolicy(require_encrypted_aggregation=True), "encryption_required"),
        (SitePolicy(min_noise_multiplier=0.8), "noise_too_low"),
    ]
    for policy, rule in cases:
        with pytest.raises(PrivacyError) as err:
            check_task(policy, ledger, task)
        assert err.value.rule == rule
    check_task(
        SitePolicy(require_encrypted_aggregation=True),
        ledger,
        PlannedTask(mode="ckks", noise_multiplier=None, sample_rate=0.1, steps=5),
    )


def test_site_policy_schema_rejects_contradictions():
    """A policy requiring encryption without allowing ckks is a config error."""
    policy = from_dict(SitePolicy, {"max_epsilon": 8, "allowed_modes": ["plain", "ckks"]})
    assert policy.max_epsilon == 8.0
    with pytest.raises(ConfigError, match="require_encrypted_aggregation"):
        from_dict(SitePolicy, {"allowed_modes": ["plain"], "require_encrypted_aggregation": True})
    with pytest.raises(ConfigError, match="allowed_modes"):
        from_dict(SitePolicy, {"allowed_modes": ["open"]})


def test_clip_and_noise_clips_and_adds_the_stated_noise():
    """The update is clipped to the norm and the noise has std noise_multiplier * clip."""
    update = torch.full((200_000,), 0.1)  # norm ~ 44.7
    clipped = clip_and_noise(update, clip_norm=2.0, noise_multiplier=0.0)
    assert torch.linalg.vector_norm(clipped.double()).item() == pytest.approx(2.0, rel=1e-6)
    small = torch.full((4,), 0.1)
    assert torch.allclose(clip_and_noise(small, clip_norm=2.0, noise_multiplier=0.0), small)
    noised = clip_and_noise(
        update, clip_norm=2.0, noise_multiplier=0.5, generator=torch.Generator().manual_seed(0)
    )
    assert (noised - clipped).std().item() == pytest.approx(1.0, rel=0.01)


def test_weight_noise_accounting_is_gaussian_rdp_with_sensitivity_two_clip(tmp_path):
    """Weight noise composes as RDP alpha/(2 (sigma/2)^2) per round, in the same ledger."""
    sigma, rounds = 8.0, 10
    orders = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    closed_form = rounds * orders / (2 * (sigma / 2) ** 2)
    eps_closed, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=closed_form, delta=DELTA)
    assert weight_noise_epsilon(sigma, rounds, DELTA) == pytest.approx(eps_closed)
    target = weight_noise_multiplier_for(5.0, rounds, DELTA)
    assert weight_noise_epsilon(target, rounds, DELTA) <= 5.0
    ledger = PrivacyLedger.open(tmp_path, delta=DELTA)
    _spend(ledger, 1, 40)
    for r in range(1, rounds + 1):
        ledger.record_weight_noise(r, noise_multiplier=sigma, clip_norm=1.0)
    both = _opacus_epsilon([(1.1, 0.02, 40), (sigma / 2, 1.0, rounds)])
    assert PrivacyLedger.load(tmp_path).epsilon() == pytest.approx(both)
    assert both > epsilon_for(1.1, 0.02, 40, DELTA)


def test_ledger_report_carries_spending_and_latest_dp_setting(tmp_path):
    """report() gives the header fields: epsilon, delta, steps and the latest DP parameters."""
    ledger = PrivacyLedger.open(tmp_path, delta=DELTA)
    assert ledger.report() == {"epsilon": 0.0, "delta": DELTA, "accountant": "rdp", "dp_steps": 0}
    _spend(ledger, 1, 4, sigma=1.3, q=0.05, clip=0.7)
    report = ledger.report()
    assert report["epsilon"] == pytest.approx(_opacus_epsilon([(1.3, 0.05, 4)]))
    assert (
        report["dp_steps"],
        report["noise_multiplier"],
        report["sample_rate"],
        report["max_grad_norm"],
    ) == (4, 1.3, 0.05, 0.7)


def test_check_task_refuses_a_ledger_at_another_delta(tmp_path):
    """The policy's delta and the ledger's must agree, or epsilons are not comparable."""
    ledger = PrivacyLedger.open(tmp_path, delta=1e-6)
    task = PlannedTask(mode="plain", noise_multiplier=1.0, sample_rate=0.1, steps=1)
    with pytest.raises(ConfigError, match="delta"):
        check_task(SitePolicy(delta=1e-5, max_epsilon=5.0), ledger, task)
