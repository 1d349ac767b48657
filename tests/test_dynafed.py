"""DynaFed: snapshot trajectory, one-off pseudo-set synthesis, server fine-tuning, checkpoints."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from latentfl.config import from_dict
from latentfl.distill import FunctionalStudent, match_trajectory
from latentfl.models import flatten_params, state_to_tensors
from latentfl.strategies import ModelSpec, StrategyConfig, Update, build_strategy
from latentfl.strategies.dynafed import (
    MIN_STEP_SIZE,
    DynaFed,
    DynaFedConfig,
    sample_pair,
    synthesize_pseudo_set,
)
from latentfl.training import TrainConfig

SPEC = ModelSpec(name="convnet", num_classes=4, in_shape=(3, 8, 8),
                 options={"width": 8, "depth": 1})
TINY = DynaFedConfig(trajectory_length=3, ipc=2, syn_steps=3, iterations=8, finetune_steps=5,
                     finetune_lr=1e-2, device="cpu")


def toy_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class shows as a coloured mean, so a tiny net learns it in a few steps."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    means = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, -1.0, -1.0]])
    x = means[y][:, :, None, None] + 0.5 * torch.randn(n, 3, 8, 8, generator=gen)
    return x, y


def trained_trajectory(length: int = 5, steps_per_snapshot: int = 3) -> torch.Tensor:
    """Flat weights of a tiny ConvNet trained by SGD on toy data, one row per snapshot."""
    torch.manual_seed(0)
    model = SPEC.build()
    x, y = toy_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snaps = [flatten_params(model)]
    for _ in range(length - 1):
        for _ in range(steps_per_snapshot):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        snaps.append(flatten_params(model))
    return torch.stack(snaps)


def fake_update(strategy: DynaFed, round: int, shift: float, pid: str) -> Update:
    weights = {k: v + shift for k, v in strategy.global_weights().items()}
    return Update(pid, round, weights, num_examples=10, num_steps=1)


def test_snapshots_are_independent_copies() -> None:
    """Mutating the live global weights or model after a snapshot leaves the trajectory as it was."""
    strategy = build_strategy(StrategyConfig(method="dynafed", model=SPEC, dynafed=TINY))
    strategy.initialize(0)
    first = strategy.trajectory[0].clone()
    for t in strategy.global_weights().values():
        t.add_(1.0)
    with torch.no_grad():
        for p in strategy.evaluation_model().parameters():
            p.mul_(3.0)
    assert torch.equal(strategy.trajectory[0], first)
    updates = [fake_update(strategy, 1, 0.5, "a"), fake_update(strategy, 1, 1.5, "b")]
    strategy.aggregate_round(1, updates)
    snap = strategy.trajectory[1].clone()
    for u in updates:
        for t in u.weights.values():
            t.zero_()
    for t in strategy.global_weights().values():
        t.mul_(-2.0)
    assert torch.equal(strategy.trajectory[1], snap)
    assert not torch.equal(strategy.trajectory[0], strategy.trajectory[1])


def test_sample_pair_targets_mean_of_later_snapshots() -> None:
    """The target is the mean of 2 or 3 of the M snapshots right after the start."""
    traj = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 3)  # row i holds i
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        start, target = sample_pair(traj, 3, gen)
        s = int(start[0])
        means = set()
        for a in range(s + 1, s + 4):
            for b in range(a + 1, s + 4):
                means.add(round((a + b) / 2, 4))
        means.add(round(float(s + 2), 4))  # all three
        assert s + 3 <= 7
        assert round(float(target[0]), 4) in means


def test_synthesis_reduces_matching_loss() -> None:
    """A few iterations on a tiny trajectory lower the matching loss on a fixed start/target."""
    traj = trained_trajectory()
    cfg = DynaFedConfig(trajectory_length=5, ipc=2, syn_steps=4, iterations=40, augment=False,
                        lr_images=0.05, device="cpu")
    kwargs = dict(num_classes=4, image_shape=(3, 8, 8), seed=3, device=torch.device("cpu"))
    early, _ = synthesize_pseudo_set(traj, SPEC.build(), replace(cfg, iterations=1), **kwargs)
    late, losses = synthesize_pseudo_set(traj, SPEC.build(), cfg, **kwargs)
    assert losses.shape == (40,) and torch.isfinite(losses).all()
    assert late.images.shape == (8, 3, 8, 8) and late.label_logits.shape == (8, 4)
    student = FunctionalStudent(SPEC.build())
    labels = torch.arange(4).repeat_interleave(2)
    start, target = traj[0], traj[1:4].mean(0)

    def loss(pseudo) -> float:
        return float(match_trajectory(student, start, target, pseudo.images, labels,
                                      pseudo.step_size, steps=4, augment=None,
                                      label_logits=pseudo.label_logits).loss)

    assert loss(late) < 0.8 * loss(early)  # measured: 1.00 -> 0.65
    assert not torch.equal(late.label_logits, early.label_logits)  # the soft labels were learnt


def test_learnt_step_size_stays_positive() -> None:
    """A step-size learning rate large enough to drive it negative is stopped at the floor."""
    cfg = DynaFedConfig(trajectory_length=5, ipc=1, syn_steps=2, iterations=5, augment=False,
                        initial_step_size=1e-3, lr_step_size=1.0, device="cpu")
    pseudo, losses = synthesize_pseudo_set(
        trained_trajectory(), SPEC.build(), cfg, num_classes=4, image_shape=(3, 8, 8), seed=0,
        device=torch.device("cpu"))
    assert pseudo.step_size >= torch.tensor(MIN_STEP_SIZE) and torch.isfinite(losses).all()


def test_pseudo_set_made_once_then_every_aggregate_finetuned() -> None:
    """Synthesis happens when the trajectory is full; later aggregates are fine-tuned, inputs kept."""
    strategy = DynaFed(SPEC, TrainConfig(), config=TINY)
    strategy.initialize(0)
    m1 = strategy.aggregate_round(1, [fake_update(strategy, 1, 0.01, "a")])
    assert strategy.pseudo is None and "finetune_loss" not in m1
    m2 = strategy.aggregate_round(2, [fake_update(strategy, 2, 0.01, "a")])
    assert strategy.pseudo is not None and "distill_loss_last" in m2 and "finetune_loss" in m2
    pseudo_images = strategy.pseudo.images.clone()
    assert len(strategy.trajectory) == 3
    aggregate = {k: v.clone() for k, v in strategy.global_weights().items()}
    kept = {k: v.clone() for k, v in aggregate.items()}
    tuned, metrics = strategy.post_aggregate(3, aggregate)
    assert "finetune_loss" in metrics and "distill_loss_last" not in metrics
    assert any(not torch.equal(tuned[k], aggregate[k]) for k in aggregate)
    assert all(torch.equal(aggregate[k], kept[k]) for k in aggregate)
    assert set(tuned) == set(aggregate)
    assert len(strategy.trajectory) == 3 and torch.equal(strategy.pseudo.images, pseudo_images)


def test_state_dict_round_trip_keeps_trajectory_and_pseudo_set() -> None:
    """A checkpoint restores the global weights, the trajectory and the pseudo set."""
    strategy = DynaFed(SPEC, TrainConfig(), config=TINY)
    strategy.initialize(0)
    for r in (1, 2):
        strategy.aggregate_round(r, [fake_update(strategy, r, 0.01, "a")])
    tensors, meta = strategy.state_dict()
    restored = DynaFed(SPEC, TrainConfig(), config=TINY)
    restored.load_state_dict({k: v.clone() for k, v in tensors.items()}, dict(meta))
    assert meta["synthesised"] is True and meta["snapshots"] == 3
    assert torch.equal(torch.stack(restored.trajectory), torch.stack(strategy.trajectory))
    assert torch.equal(restored.pseudo.images, strategy.pseudo.images)
    assert torch.equal(restored.pseudo.label_logits, strategy.pseudo.label_logits)
    agg = state_to_tensors(strategy.evaluation_model())
    a, _ = strategy.post_aggregate(3, agg)
    b, _ = restored.post_aggregate(3, agg)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dynafed_section_parses_from_toml_table() -> None:
    """[strategy] with method = 'dynafed' and a [strategy.dynafed] table builds a DynaFed."""
    cfg = from_dict(StrategyConfig, {"method": "dynafed", "weighted": False,
                                     "dynafed": {"trajectory_length": 7, "ipc": 3}})
    strategy = build_strategy(cfg)
    assert isinstance(strategy, DynaFed) and not strategy.weighted
    assert strategy.config.trajectory_length == 7 and strategy.config.ipc == 3
    assert strategy.config.iterations == 3000 and strategy.config.syn_steps == 20


def test_batchnorm_model_is_refused_at_initialize() -> None:
    """A surrogate with BatchNorm cannot be a matching student: refused before round 1."""
    from latentfl.errors import DistillError

    spec = replace(SPEC, options={"width": 8, "depth": 1, "norm": "batch"})
    with pytest.raises(DistillError, match="instance"):
        DynaFed(spec, TrainConfig(), config=TINY).initialize(0)


def test_aggregate_alone_gives_same_state_as_updates() -> None:
    """Fed only the weighted mean (the encrypted-aggregation path), DynaFed ends where it would
    with the individual updates: same trajectory, pseudo set and fine-tuned global weights."""
    from latentfl.strategies import weighted_mean

    plain = DynaFed(SPEC, TrainConfig(), config=TINY)
    alone = DynaFed(SPEC, TrainConfig(), config=TINY)
    plain.initialize(0)
    alone.initialize(0)
    for r in (1, 2, 3):
        updates = [fake_update(plain, r, 0.01 * r, "a"), fake_update(plain, r, -0.02, "b")]
        plain.aggregate_round(r, updates)
        mean = weighted_mean([u.weights for u in updates], [u.num_examples for u in updates])
        alone.accept_aggregate(r, mean, sum(u.num_examples for u in updates))
    assert torch.equal(torch.stack(plain.trajectory), torch.stack(alone.trajectory))
    assert torch.equal(plain.pseudo.images, alone.pseudo.images)
    for k, v in plain.global_weights().items():
        torch.testing.assert_close(alone.global_weights()[k], v, rtol=0, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_synthesis_and_finetuning_on_cuda_return_cpu_weights() -> None:
    """With device cuda the pseudo set lives on the GPU; the weights sent out stay CPU tensors."""
    strategy = DynaFed(SPEC, TrainConfig(), config=replace(TINY, device="cuda"))
    strategy.initialize(0)
    for r in (1, 2, 3):
        strategy.aggregate_round(r, [fake_update(strategy, r, 0.01, "a")])
    assert strategy.pseudo is not None and strategy.pseudo.images.is_cuda
    assert all(t.device.type == "cpu" for t in strategy.global_weights().values())
    tensors, meta = strategy.state_dict()
    assert all(t.device.type == "cpu" for t in tensors.values())
