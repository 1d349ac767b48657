"""Batched local training of many participants equals the sequential loop, one by one.

The reference is :func:`latentfl.training.train` run on each participant alone. Most cases use a
ConvNet without normalisation: with instance norm the conv biases have an exact-zero gradient, so
their computed gradient is rounding noise that Adam rescales to full-size steps, and any two
correct implementations then differ in those biases (one instance-norm SGD case covers GroupNorm
under vmap).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from latentfl.data import Dataset, ImageSet, PartitionConfig
from latentfl.errors import ConfigError, ModelError
from latentfl.models import build_model, load_tensors_, state_to_tensors
from latentfl.simulate import SimulationConfig, run_simulation
from latentfl.strategies import ModelSpec, StrategyConfig, Task
from latentfl.strategies.local import run_task, run_tasks
from latentfl.training import TrainConfig, train
from latentfl.training_batched import can_batch, train_many

SIZES = (37, 64, 5)  # unequal: unequal step counts and short last batches
SPEC = ModelSpec(name="convnet", num_classes=10, in_shape=(3, 8, 8),
                 options={"width": 8, "depth": 2, "norm": "none"})


def participants(spec: ModelSpec = SPEC, seed: int = 1):
    """Starting weights (each participant its own) and random data, one per size in SIZES."""
    torch.manual_seed(seed)
    starts = [state_to_tensors(spec.build()) for _ in SIZES]
    data = [(torch.randn(n, 3, 8, 8), torch.randint(0, 10, (n,))) for n in SIZES]
    return starts, data


def sequential(spec, starts, data, configs):
    out = []
    for start, (x, y), config in zip(starts, data, configs, strict=True):
        model = spec.build()
        load_tensors_(model, start)
        result = train(model, x, y, config)
        out.append((state_to_tensors(model), result))
    return out


CASES = {
    "sgd": TrainConfig(batch_size=16, lr=0.05),
    "momentum_decay_augment": TrainConfig(batch_size=16, lr=0.05, momentum=0.9,
                                          weight_decay=5e-4, augment=True, epochs=2),
    "fedprox": TrainConfig(batch_size=16, lr=0.05, prox_mu=0.1, epochs=2),
    "adam": TrainConfig(batch_size=16, lr=1e-2, optimizer="adam", weight_decay=1e-3,
                        augment=True, epochs=3),
    "max_steps": TrainConfig(batch_size=16, lr=0.05, momentum=0.5, epochs=5, max_steps=7),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_many_equals_train_per_participant(case):
    """Weights, steps, examples and mean loss match train() run on each participant alone."""
    starts, data = participants()
    configs = [replace(CASES[case], seed=100 + i) for i in range(len(SIZES))]
    got = train_many(SPEC.build(), starts, data, configs)
    want = sequential(SPEC, starts, data, configs)
    for (weights, result), (ref_weights, ref) in zip(got, want, strict=True):
        assert (result.steps, result.examples) == (ref.steps, ref.examples)
        assert result.loss == pytest.approx(ref.loss, rel=1e-5)
        assert list(weights) == list(ref_weights)
        for name in ref_weights:
            torch.testing.assert_close(weights[name], ref_weights[name], rtol=1e-5, atol=1e-6)


def test_train_many_with_instance_norm_matches_sgd():
    """GroupNorm (instance norm) layers under vmap give the sequential SGD result."""
    spec = replace(SPEC, options={"width": 8, "depth": 2, "norm": "instance"})
    starts, data = participants(spec, seed=2)
    configs = [TrainConfig(batch_size=16, lr=0.05, momentum=0.9, seed=7 + i) for i in range(3)]
    got = train_many(spec.build(), starts, data, configs)
    for (weights, _), (ref_weights, _) in zip(got, sequential(spec, starts, data, configs),
                                            strict=True):
        for name in ref_weights:
            torch.testing.assert_close(weights[name], ref_weights[name], rtol=1e-5, atol=1e-6)


def test_can_batch_names_why_not():
    """BatchNorm buffers, settings that differ beyond the seed and DP wrapping are refused."""
    configs = [TrainConfig(seed=1), TrainConfig(seed=2)]
    assert can_batch(SPEC.build(), configs) is None
    bn = build_model("convnet", 10, (3, 8, 8), width=8, depth=1, norm="batch")
    assert "buffers" in can_batch(bn, configs)
    assert "differ" in can_batch(SPEC.build(), [TrainConfig(lr=0.1), TrainConfig(lr=0.2)])
    assert "DP-SGD" in can_batch(SPEC.build(), configs, wrap=lambda m, o, d: (m, o, d))
    with pytest.raises(ConfigError, match="buffers"):
        train_many(bn, [state_to_tensors(bn)], [(torch.randn(4, 3, 8, 8),
                                                 torch.zeros(4, dtype=torch.int64))], configs[:1])


def test_non_finite_loss_names_the_participant():
    """A participant whose loss becomes non-finite is named once training ends."""
    starts, data = participants()
    x, y = data[1]
    data[1] = (x.clone().index_fill_(0, torch.tensor([3]), float("inf")), y)
    with pytest.raises(ModelError, match="participant 1 "):
        train_many(SPEC.build(), starts, data, [TrainConfig(batch_size=16)] * 3)


def test_run_tasks_updates_match_run_task():
    """Batched run_tasks (in groups of 2) returns run_task's updates, in the tasks' order."""
    starts, data = participants()
    ids = ["p02", "p00", "p01"]
    tasks = {pid: Task(round=3, weights=start, train=TrainConfig(batch_size=16, lr=0.05,
                                                                  seed=i))
             for i, (pid, start) in enumerate(zip(ids, starts, strict=True))}
    local = dict(zip(ids, data, strict=True))
    got = run_tasks(tasks, SPEC, local, mode="batched", group_size=2)
    assert [u.participant for u in got] == ids
    for update in got:
        ref = run_task(tasks[update.participant], SPEC, *local[update.participant],
                       participant=update.participant)
        assert (update.round, update.num_examples, update.num_steps) == (
            ref.round, ref.num_examples, ref.num_steps)
        assert update.metrics == pytest.approx(ref.metrics, rel=1e-5)
        assert list(update.weights) == list(ref.weights)
        for name in ref.weights:
            torch.testing.assert_close(update.weights[name], ref.weights[name],
                                       rtol=1e-5, atol=1e-6)


def test_run_tasks_falls_back_for_batchnorm():
    """A BatchNorm model asked to train batched is trained one by one, and the reason logged."""
    spec = replace(SPEC, options={"width": 4, "depth": 1, "norm": "batch"})
    starts = [state_to_tensors(spec.build()) for _ in range(2)]
    tasks = {f"p{i}": Task(1, s, TrainConfig(batch_size=8, seed=i)) for i, s in enumerate(starts)}
    local = {pid: (torch.randn(10, 3, 8, 8), torch.randint(0, 10, (10,))) for pid in tasks}
    with capture_logs() as logs:
        got = run_tasks(tasks, spec, local, mode="batched")
    assert any(e["event"] == "local_training_sequential" and "buffers" in e["reason"]
               for e in logs)
    assert set(got[0].weights) == set(state_to_tensors(spec.build()))


def tiny_dataset() -> Dataset:
    """Three classes told apart by which colour channel is bright, plus noise."""
    rng = np.random.default_rng(0)

    def split(n):
        y = np.repeat(np.arange(3), n)
        x = rng.integers(0, 90, size=(len(y), 8, 8, 3))
        x[np.arange(len(y)), :, :, y] += 150
        return ImageSet(x=x.clip(0, 255).astype(np.uint8), y=y.astype(np.int64),
                        classes=("r", "g", "b"))

    return Dataset("tiny", split(40), split(10), (0.3, 0.3, 0.3), (0.3, 0.3, 0.3))


def test_simulation_batched_equals_sequential():
    """FedAvg over 2 rounds gives the same accuracies and weights batched and sequential."""
    base = SimulationConfig(
        participants=3, rounds=2, device="cpu",
        partition=PartitionConfig(scheme="dirichlet", alpha=1.0, min_size=5, seed=1),
        strategy=StrategyConfig(
            method="fedavg",
            model=ModelSpec(name="convnet", num_classes=3, in_shape=(3, 8, 8),
                            options={"width": 4, "depth": 1, "norm": "none"}),
            local=TrainConfig(epochs=2, batch_size=16, lr=0.05, augment=True),
        ),
    )
    data = tiny_dataset()
    runs = {mode: run_simulation(replace(base, local_training=mode), dataset=data)
            for mode in ("sequential", "batched")}
    seq, bat = runs["sequential"], runs["batched"]
    assert [r.accuracy for r in bat.history] == [r.accuracy for r in seq.history]
    for name, value in seq.strategy.global_weights().items():
        torch.testing.assert_close(bat.strategy.global_weights()[name], value,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batched_matches_sequential():
    """On CUDA, train_many (pinned augmentation maps, no per-step waits) matches train()."""
    starts, data = participants()
    configs = [replace(CASES["adam"], seed=100 + i) for i in range(len(SIZES))]
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions differ by algorithm at ~1e-3
    try:
        got = train_many(SPEC.build(), starts, data, configs, device="cuda")
        want = []
        for start, (x, y), config in zip(starts, data, configs, strict=True):
            model = SPEC.build()
            load_tensors_(model, start)
            result = train(model, x, y, config, device="cuda")
            want.append((state_to_tensors(model), result))
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    for (weights, result), (ref_weights, ref) in zip(got, want, strict=True):
        assert result.steps == ref.steps
        for name in ref_weights:
            torch.testing.assert_close(weights[name], ref_weights[name], rtol=1e-4, atol=1e-5)
