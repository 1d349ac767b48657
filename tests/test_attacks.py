"""The simulator's attack harness, and the defences that set attackers aside, at tiny scale."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from latentfl.attacks import AttackerConfig, add_trigger, assign, poison_data, tamper
from latentfl.config import from_dict
from latentfl.distill import DistillConfig
from latentfl.errors import ConfigError
from latentfl.simulate import PartitionConfig, SimulationConfig, run_simulation
from latentfl.strategies import StrategyConfig, Update
from latentfl.strategies.defence import RobustConfig
from latentfl.strategies.feddgm import FedDGMConfig, ScreeningConfig
from latentfl.training import TrainConfig
from test_simulate import SPEC, tiny_dataset

MEAN = STD = (0.3, 0.3, 0.3)


def sim(method: str = "fedavg", participants: int = 5, attackers=(), **strategy
        ) -> SimulationConfig:
    return SimulationConfig(
        participants=participants, rounds=1, device="cpu",
        partition=PartitionConfig(scheme="iid", seed=1),
        strategy=StrategyConfig(method=method, model=SPEC,
                                local=TrainConfig(epochs=1, batch_size=16, lr=0.05), **strategy),
        attackers=tuple(attackers),
    )


def test_attackers_are_the_first_participants_by_count_or_fraction():
    """count takes that many ids from the front, fraction rounds its share, groups follow on."""
    ids = [f"p{i:02d}" for i in range(10)]
    got = assign([AttackerConfig(kind="scale", count=2),
                  AttackerConfig(kind="backdoor", fraction=0.1)], ids)
    assert {p: a.kind for p, a in got.items()} == {"p00": "scale", "p01": "scale",
                                                   "p02": "backdoor"}


@pytest.mark.parametrize("kind,expected", [("scale", 10.0), ("sign_flip", -10.0)])
def test_scale_and_sign_flip_multiply_the_change(kind, expected):
    """scale sends w + 10 d and sign_flip w - 10 d, d the honest change."""
    start = {"w": torch.zeros(3)}
    honest = Update("p00", 1, {"w": torch.ones(3)}, 5, 1)
    sent = tamper(AttackerConfig(kind=kind), honest, start, seed=0)
    assert torch.equal(sent.weights["w"], torch.full((3,), expected))


def test_gaussian_sends_noise_instead_of_the_change():
    """gaussian replaces the change by N(0, sigma^2) noise, reproducibly from the seed."""
    start = {"w": torch.zeros(2000)}
    honest = Update("p00", 1, {"w": torch.ones(2000)}, 5, 1)
    a = tamper(AttackerConfig(kind="gaussian", sigma=2.0), honest, start, seed=3)
    b = tamper(AttackerConfig(kind="gaussian", sigma=2.0), honest, start, seed=3)
    assert torch.equal(a.weights["w"], b.weights["w"])
    assert float(a.weights["w"].std()) == pytest.approx(2.0, rel=0.1)


def test_label_flip_and_backdoor_change_the_training_data():
    """label_flip maps k to K-1-k; backdoor triggers and relabels poison_fraction of examples."""
    x, y = torch.zeros(10, 3, 8, 8), torch.tensor([1, 2] * 5)
    _, flipped = poison_data(AttackerConfig(kind="label_flip"), x, y, num_classes=3,
                             mean=MEAN, std=STD, seed=0)
    assert flipped.tolist() == [1, 0] * 5
    px, py = poison_data(AttackerConfig(kind="backdoor", target=0, poison_fraction=0.4), x, y,
                         num_classes=3, mean=MEAN, std=STD, seed=0)
    poisoned = (py == 0)
    assert int(poisoned.sum()) == 4
    assert torch.allclose(px[poisoned][:, :, -3:, -3:], torch.tensor((1 - 0.3) / 0.3))
    assert torch.equal(px[~poisoned], x[~poisoned])


@pytest.mark.parametrize("kind", ["sign_flip", "scale", "gaussian", "label_flip", "backdoor"])
def test_each_attack_runs_in_the_simulator(kind):
    """Every attack kind runs a round; a backdoor run reports its success rate."""
    result = run_simulation(sim(attackers=[AttackerConfig(kind=kind, count=1)]),
                            dataset=tiny_dataset())
    metrics = result.history[-1].metrics
    assert result.history[-1].accuracy is not None
    assert ("backdoor_success" in metrics) == (kind == "backdoor")
    if kind == "backdoor":
        assert 0.0 <= metrics["backdoor_success"] <= 1.0


def test_absent_attackers_take_no_part_in_the_round():
    """absent: the attackers' sites get no task and send nothing; the others' data is all used."""
    honest = run_simulation(sim(), dataset=tiny_dataset()).history[-1].metrics
    without = run_simulation(sim(attackers=[AttackerConfig(kind="absent", count=2)]),
                             dataset=tiny_dataset()).history[-1].metrics
    assert (honest["participants"], without["participants"]) == (5.0, 3.0)
    assert 0 < without["examples"] < honest["examples"]


def test_median_sets_aside_a_scaling_attacker_in_the_simulator():
    """With rule = median, a x10 attacker is reported set aside in the round's record."""
    result = run_simulation(sim(attackers=[AttackerConfig(kind="scale", count=1)],
                                robust=RobustConfig(rule="median")), dataset=tiny_dataset())
    record = result.history[-1]
    assert [s["participant"] for s in record.set_aside] == ["p00"]
    assert record.metrics["attackers_set_aside"] == 1.0


def test_simulation_refuses_too_few_participants_for_bulyan_and_too_many_attackers():
    """Bulyan f=1 needs 7 sampled participants; attackers cannot outnumber participants."""
    with pytest.raises(ConfigError, match="needs 7 updates a round"):
        from_dict(SimulationConfig, {"participants": 5,
                                     "strategy": {"robust": {"rule": "bulyan", "f": 1}}})
    with pytest.raises(ConfigError, match="attackers add up to 6"):
        from_dict(SimulationConfig, {"participants": 5,
                                     "attackers": [{"kind": "scale", "count": 6}]})


def _feddgm(screening: bool) -> FedDGMConfig:
    return FedDGMConfig(
        global_model=SPEC, ipc=1, mean=MEAN, std=STD, device="cpu",
        distill=DistillConfig(iterations=2, steps=2, log_every=0),
        global_train=TrainConfig(epochs=1, batch_size=8, lr=0.05),
        surrogate_train=TrainConfig(epochs=1, batch_size=8, lr=0.05),
        screening=ScreeningConfig(enabled=screening),
    )


@pytest.mark.parametrize("kind", ["scale", "sign_flip"])
def test_feddgm_screening_sets_aside_a_poisoned_surrogate_and_keeps_the_honest(kind):
    """Screening drops a scaled or sign-flipped surrogate before distilling; honest ones stay."""
    cfg = sim("feddgm", attackers=[AttackerConfig(kind=kind, count=1)],
              feddgm=_feddgm(True))
    result = run_simulation(cfg, dataset=tiny_dataset())
    assert [s["participant"] for s in result.history[-1].set_aside] == ["p00"]
    assert sorted(result.strategy.synthetic_sets()) == ["p01", "p02", "p03", "p04"]


def test_feddgm_without_screening_distils_every_upload():
    """With screening off (the default) every upload, the attacker's too, is distilled."""
    cfg = sim("feddgm", attackers=[AttackerConfig(kind="scale", count=1)],
              feddgm=_feddgm(False))
    result = run_simulation(cfg, dataset=tiny_dataset())
    assert result.history[-1].set_aside == []
    assert len(result.strategy.synthetic_sets()) == 5


def test_backdoor_trigger_is_a_white_corner():
    """The trigger sets the bottom-right square to white in the data's normalisation."""
    x = add_trigger(torch.zeros(1, 3, 8, 8), 2, MEAN, STD)
    assert torch.allclose(x[0, :, -2:, -2:], torch.tensor((1 - 0.3) / 0.3))
    assert float(x[0, :, :-2].abs().sum()) == 0.0


def test_attacker_config_refuses_unknown_kinds():
    """An unknown attack kind is refused naming the choices."""
    with pytest.raises(ConfigError, match="expected one of 'sign_flip'"):
        from_dict(SimulationConfig, {"attackers": [{"kind": "poison"}]})
    assert replace(AttackerConfig(), count=2).size(10) == 2
