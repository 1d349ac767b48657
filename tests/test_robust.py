"""Robust aggregation rules against plain references, and through the averaging methods."""

from __future__ import annotations

import statistics

import pytest
import torch

from latentfl.config import from_dict
from latentfl.errors import ConfigError
from latentfl.strategies import FedAvg, FedNova, ModelSpec, StrategyConfig, Update
from latentfl.strategies.defence import RobustConfig, apply_rule, clip_update
from latentfl.strategies.feddgm import ScreeningConfig
from latentfl.strategies.robust import (
    bulyan_rule,
    coordinate_median,
    krum_rule,
    krum_scores,
    norm_bound_rule,
    screen_uploads,
    trimmed_mean,
)
from latentfl.training import TrainConfig

IDS = [f"p{i:02d}" for i in range(11)]
RULES = ("median", "trimmed_mean", "krum", "multi_krum", "bulyan", "norm_bound")


def honest(n: int, p: int = 40, seed: int = 0) -> torch.Tensor:
    """n honest deltas scattered around one shared direction."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(p, generator=g, dtype=torch.float64)
    return centre + 0.1 * torch.randn(n, p, generator=g, dtype=torch.float64)


def test_median_of_identical_updates_is_that_update():
    """The coordinate median of copies of one update is that update."""
    row = honest(1)[0]
    assert torch.equal(coordinate_median(row.repeat(5, 1)), row)


def test_median_matches_statistics_median():
    """The coordinate median agrees with Python's statistics.median, even counts included."""
    d = honest(6)
    ref = torch.tensor([statistics.median(d[:, j].tolist()) for j in range(d.shape[1])],
                       dtype=torch.float64)
    assert torch.allclose(coordinate_median(d), ref)


def test_trimmed_mean_matches_a_per_coordinate_loop_and_the_honest_mean():
    """The trimmed mean drops floor(beta n) values from each end; on honest updates ~ the mean."""
    d = honest(10)
    ref = torch.tensor([sum(sorted(d[:, j].tolist())[2:8]) / 6 for j in range(d.shape[1])],
                       dtype=torch.float64)
    assert torch.allclose(trimmed_mean(d, 0.2), ref)
    assert torch.allclose(trimmed_mean(d, 0.2), d.mean(dim=0), atol=0.1)


def test_krum_scores_match_a_pairwise_loop():
    """Krum's score is the summed squared distance to the n - f - 2 nearest other updates."""
    d = honest(7)
    f = 2
    for i in range(7):
        dists = sorted(float((d[i] - d[j]).pow(2).sum()) for j in range(7) if j != i)
        assert krum_scores(d, f)[i].item() == pytest.approx(sum(dists[:7 - f - 2]), rel=1e-6)


def test_krum_picks_an_honest_update_and_sets_the_attackers_aside():
    """With f far-off attackers, Krum keeps one honest update and excludes every attacker."""
    d = honest(9)
    d[:2] = 50.0  # two colluding attackers, far away
    result = krum_rule(IDS[:9], d, f=2, keep=1)
    kept = [i for i in range(9) if IDS[i] not in {s.participant for s in result.set_aside}]
    assert kept and kept[0] >= 2
    assert {"p00", "p01"} <= {s.participant for s in result.set_aside}
    assert all(s.score > s.threshold for s in result.set_aside)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("attack", ["scale", "sign_flip"])
def test_each_rule_sets_aside_a_scaled_or_flipped_update(rule, attack):
    """A model-replacement (x10) or sign-flipped (x-10) update is set aside by every rule."""
    d = honest(11)
    d[0] = d[0] * (10.0 if attack == "scale" else -10.0)
    result = apply_rule(RobustConfig(rule=rule, f=2), IDS, d)
    assert "p00" in {s.participant for s in result.set_aside}
    assert (result.delta - d[1:].mean(dim=0)).norm() < 0.5 * d[1:].mean(dim=0).norm()


@pytest.mark.parametrize("rule", RULES)
def test_an_honest_round_is_unchanged_within_tolerance(rule):
    """On honest updates every rule lands near their plain mean."""
    d = honest(11)
    result = apply_rule(RobustConfig(rule=rule, f=2, clip_multiple=2.0), IDS, d)
    mean = d.mean(dim=0)
    assert (result.delta - mean).norm() < 0.1 * mean.norm()


def test_bulyan_refuses_fewer_than_4f_plus_3_updates():
    """Bulyan with f = 2 refuses a round of 10 updates, naming the 11 it needs."""
    with pytest.raises(ConfigError, match="at least 11 updates"):
        bulyan_rule(IDS[:10], honest(10), f=2)


def test_norm_bound_clips_to_a_fixed_bound():
    """A fixed bound scales longer deltas to exactly that norm and reports them clipped."""
    d = honest(3)
    result = norm_bound_rule(IDS[:3], d, clip_norm=1.0, clip_multiple=1.0)
    expected = (d / d.norm(dim=1, keepdim=True)).mean(dim=0)
    assert torch.allclose(result.delta, expected)
    assert [s.action for s in result.set_aside] == ["clipped"] * 3


def test_robust_section_is_validated():
    """Unknown keys and a robust rule on FedDGM are refused with one sentence each."""
    with pytest.raises(ConfigError, match="unknown key 'fraction'"):
        from_dict(StrategyConfig, {"robust": {"rule": "median", "fraction": 0.1}})
    with pytest.raises(ConfigError, match="FedDGM screens uploads"):
        from_dict(StrategyConfig, {"method": "feddgm", "robust": {"rule": "krum"}})


def _updates(start, scale: float, claimed: int) -> list[Update]:
    ups = []
    for i in range(5):
        w = {k: v + 0.01 * (i + 1) for k, v in start.items()}
        if i == 0:
            w = {k: start[k] + scale * (w[k] - start[k]) for k in start}
        ups.append(Update(IDS[i], 1, w, claimed if i == 0 else 100, 10))
    return ups


MODEL = ModelSpec(options={"width": 4, "depth": 1})


@pytest.mark.parametrize("cls", [FedAvg, FedNova])
def test_averaging_methods_resist_a_scaled_update_with_inflated_counts(cls):
    """Median FedAvg/FedNova ignore a site's claimed 10^6 examples and its x100 update."""
    robust = cls(MODEL, TrainConfig(), robust=RobustConfig(rule="median"))
    plain = cls(MODEL, TrainConfig())
    for s in (robust, plain):
        s.initialize(0)
    start = robust.global_weights()
    updates = _updates(start, 100.0, 10**6)
    robust.aggregate_round(1, updates)
    plain.aggregate_round(1, updates)

    def shift(s):
        return max(float((s.global_weights()[k] - start[k]).abs().max()) for k in start)

    assert 10 * shift(robust) < shift(plain)
    assert [a.participant for a in robust.set_aside()] == ["p00"]


def test_participant_clip_bounds_the_change():
    """clip_update scales a change longer than the bound to the bound and keeps short ones."""
    start = {"w": torch.zeros(4)}
    assert float(clip_update(start, {"w": torch.full((4,), 3.0)}, 2.0)["w"].norm()) == \
        pytest.approx(2.0)
    assert torch.equal(clip_update(start, {"w": torch.full((4,), 0.1)}, 2.0)["w"],
                       torch.full((4,), 0.1))


def test_run_task_clips_its_change_to_the_tasks_bound():
    """A task with max_update_norm (norm_bound with clip_norm) comes back with its change
    clipped, as an honest participant sends it before any masking."""
    from latentfl.strategies import Task, run_task
    from latentfl.strategies.defence import update_deltas

    strategy = FedAvg(MODEL, TrainConfig(lr=0.5, batch_size=8),
                      robust=RobustConfig(rule="norm_bound", clip_norm=0.05))
    strategy.initialize(0)
    task: Task = strategy.configure_round(1, ["p00"])["p00"]
    assert task.train.max_update_norm == 0.05
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    update = run_task(task, MODEL, x, y, participant="p00")
    norm = float(update_deltas(task.weights, [update.weights]).norm())
    assert norm == pytest.approx(0.05, rel=1e-4)


SITES = [f"p{i:02d}" for i in range(10)]


def honest_rounds(variation: float, rounds: int = 200):
    """Each round's changes of 10 honest uploads: a shared direction plus each site's own noise,
    whose size varies by ``variation`` between sites."""
    g = torch.Generator().manual_seed(0)
    for _ in range(rounds):
        noise = 0.5 * (1 + variation * (2 * torch.rand(10, 1, generator=g) - 1))
        yield torch.randn(1000, generator=g) + noise * torch.randn(10, 1000, generator=g)


def screened(deltas: torch.Tensor, min_spread: float) -> set[str]:
    return {s.participant for s in screen_uploads(SITES, deltas, mads=ScreeningConfig().mads,
                                                  min_spread=min_spread)}


def test_feddgm_screening_default_rarely_drops_an_honest_site_and_always_a_boosted_one():
    """FedDGM's default threshold, over 200 rounds of 10 uploads whose noise size varies by 20%
    between sites: the two uploads boosted 3 times (the backdoor attack's boost) are set aside in
    every round, and an honest one in at most 15% of rounds (12 of 200 at the defaults; 21 at 5
    MADs without the floor; 70 at 3 MADs, the first default)."""
    floor = ScreeningConfig().min_spread
    honest_dropped = 0
    for deltas in honest_rounds(0.2):
        honest_dropped += bool(screened(deltas, floor))
        deltas[:2] *= 3
        assert {"p00", "p01"} <= screened(deltas, floor)
    assert honest_dropped <= 30


def test_feddgm_screening_keeps_honest_sites_that_lie_almost_equally_far():
    """When honest uploads lie at nearly one distance from the centre (their noise sizes within
    2% of each other, as surrogates trained from one start do), the MAD alone flags a site a
    few percent out in 39 of 200 rounds; the default floor on the spread flags none, and still
    sets aside the two uploads boosted 3 times in every round."""
    floor = ScreeningConfig().min_spread
    honest_dropped = {0.0: 0, floor: 0}
    for deltas in honest_rounds(0.02):
        for spread_floor in honest_dropped:
            honest_dropped[spread_floor] += bool(screened(deltas, spread_floor))
        deltas[:2] *= 3
        assert screened(deltas, floor) == {"p00", "p01"}
    assert honest_dropped[floor] == 0
    assert honest_dropped[0.0] >= 20
