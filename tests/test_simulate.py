"""The in-process simulator runs every method end to end on tiny data, deterministically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentfl.data import Dataset, ImageSet, PartitionConfig
from latentfl.distill import DistillConfig
from latentfl.simulate import SimulationConfig, run_simulation
from latentfl.strategies import ModelSpec, StrategyConfig
from latentfl.strategies.feddgm import FedDGMConfig
from latentfl.training import TrainConfig

SPEC = ModelSpec(
    name="convnet", num_classes=3, in_shape=(3, 8, 8), options={"width": 4, "depth": 1}
)


def tiny_dataset(n_per_class: int = 40, seed: int = 0) -> Dataset:
    """Three classes told apart by which colour channel is bright, plus noise."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = np.repeat(np.arange(3), n)
        x = rng.integers(0, 90, size=(len(y), 8, 8, 3))
        x[np.arange(len(y)), :, :, y] += 150
        return ImageSet(
            x=x.clip(0, 255).astype(np.uint8), y=y.astype(np.int64), classes=("r", "g", "b")
        )

    return Dataset("tiny", split(n_per_class), split(10), (0.3, 0.3, 0.3), (0.3, 0.3, 0.3))


def config(method: str, **strategy) -> SimulationConfig:
    return SimulationConfig(
        participants=3,
        rounds=2,
        device="cpu",
        partition=PartitionConfig(scheme="dirichlet", alpha=1.0, min_size=5, seed=1),
        strategy=StrategyConfig(
            method=method,
            model=SPEC,
            local=TrainConfig(epochs=1, batch_size=16, lr=0.05),
            **strategy,
        ),
    )


@pytest.mark.parametrize("method", ["fedavg", "fedprox", "fednova"])
def test_fedavg_family_runs_and_repeats_exactly(method, tmp_path):
    """Same config, same data: bit-identical global weights; rounds.jsonl records each round."""
    data = tiny_dataset()
    cfg = config(method)
    from dataclasses import replace

    a = run_simulation(replace(cfg, output=tmp_path), dataset=data)
    b = run_simulation(cfg, dataset=data)
    assert [r.round for r in a.history] == [1, 2]
    for name, value in a.strategy.global_weights().items():
        assert torch.equal(value, b.strategy.global_weights()[name])
    lines = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    assert 0.0 <= a.history[-1].accuracy <= 1.0


def test_fedavg_learns_the_tiny_task():
    """FedAvg on an easy 3-class task beats chance clearly after a few rounds."""
    from dataclasses import replace

    cfg = replace(config("fedavg"), rounds=4)
    result = run_simulation(cfg, dataset=tiny_dataset())
    assert result.history[-1].accuracy > 0.6


def test_feddgm_two_rounds_in_the_simulator():
    """FedDGM distils per participant, trains global and surrogate, keeps each synthetic set."""
    feddgm = FedDGMConfig(
        global_model=ModelSpec(
            name="convnet", num_classes=3, in_shape=(3, 8, 8), options={"width": 8, "depth": 1}
        ),
        ipc=2,
        mean=(0.3, 0.3, 0.3),
        std=(0.3, 0.3, 0.3),
        device="cpu",
        distill=DistillConfig(iterations=3, steps=2, log_every=0),
        global_train=TrainConfig(epochs=2, batch_size=8, lr=0.05),
        surrogate_train=TrainConfig(epochs=2, batch_size=8, lr=0.05),
    )
    result = run_simulation(config("feddgm", feddgm=feddgm), dataset=tiny_dataset())
    strategy = result.strategy
    sets = strategy.synthetic_sets()
    assert sorted(sets) == ["p00", "p01", "p02"]
    s = sets["p00"]
    assert s.images.shape == (6, 3, 8, 8) and torch.isfinite(s.images).all()
    assert s.labels.tolist() == [0, 0, 1, 1, 2, 2] and s.mean == s.std == (0.3, 0.3, 0.3)
    assert result.history[-1].metrics["synthetic_images"] == 18
    restored = type(strategy)(strategy.model_spec, strategy.local, feddgm)
    restored.initialize(0)
    restored.load_state_dict(*strategy.state_dict())
    assert torch.equal(restored.synthetic_sets()["p01"].images, sets["p01"].images)


def test_feddgm_present_classes_restrict_distillation():
    """classes = 'present' distils only the classes a participant reported holding."""
    from latentfl.strategies.feddgm import FedDGM

    cfg = FedDGMConfig(global_model=SPEC, classes="present", ipc=1, device="cpu")
    strategy = FedDGM(SPEC, TrainConfig(), cfg)
    from latentfl.strategies import Update

    update = Update("a", 1, {}, 5, 1, class_counts=(3, 0, 2))
    assert strategy._classes_of(update) == (0, 2)
    assert strategy._classes_of(Update("b", 1, {}, 5, 1, {})) == (0, 1, 2)


def test_feddgm_accumulate_keeps_every_rounds_synthetic_sets():
    """accumulate = true trains on all rounds' synthetic sets and checkpoints them."""
    feddgm = FedDGMConfig(
        global_model=SPEC, ipc=1, mean=(0.3, 0.3, 0.3), std=(0.3, 0.3, 0.3), device="cpu",
        accumulate=True, distill=DistillConfig(iterations=2, steps=2, log_every=0),
        global_train=TrainConfig(epochs=1, batch_size=8, lr=0.05),
        surrogate_train=TrainConfig(epochs=1, batch_size=8, lr=0.05),
    )
    result = run_simulation(config("feddgm", feddgm=feddgm), dataset=tiny_dataset())
    assert [r.metrics["synthetic_images"] for r in result.history] == [9, 18]
    tensors, meta = result.strategy.state_dict()
    assert tensors["earlier.images"].shape[0] == 18
    from latentfl.strategies.feddgm import FedDGM
    from latentfl.training import TrainConfig as TC

    resumed = FedDGM(SPEC, TC(), feddgm)
    resumed.initialize(0)
    resumed.load_state_dict(tensors, meta)
    assert torch.equal(resumed._earlier[0], tensors["earlier.images"])
