"""The public-data baselines: prior_only, public_only and pretrained starts, in the simulator
and the experiment grid, with the same model, seeds and data as the methods they sit beside."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from latentfl.config import from_dict
from latentfl.distill import DistillConfig, GeneratorConfig
from latentfl.distill.latent import random_generator, save_generator
from latentfl.errors import ConfigError, DataError
from latentfl.experiment import ExperimentConfig, grid, run_experiment
from latentfl.simulate import PartitionConfig, SimulationConfig, run_simulation
from latentfl.strategies import ModelSpec, StrategyConfig, build_strategy
from latentfl.strategies.feddgm import FedDGMConfig
from latentfl.strategies.public import PublicDataConfig
from latentfl.training import TrainConfig, evaluate

SPEC = ModelSpec(name="convnet", num_classes=4, in_shape=(3, 8, 8),
                 options={"width": 4, "depth": 1})
COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])


def write_npz(path: Path, n: int = 160, seed: int = 0) -> str:
    """A 4-class 8x8 RGB set whose class shows as a colour (train and test)."""
    rng = np.random.default_rng(seed)

    def make(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(count) % 4
        x = COLOURS[y][:, None, None, :] + rng.normal(0, 40, (count, 8, 8, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    x, y = make(n)
    xt, yt = make(40)
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    return f"npz:{path}"


def feddgm_section(**distill) -> FedDGMConfig:
    return FedDGMConfig(
        global_model=SPEC, ipc=2, mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu",
        accumulate=True, distill=DistillConfig(iterations=2, steps=2, log_every=0, **distill),
        global_train=TrainConfig(epochs=1, batch_size=8, lr=0.05),
        surrogate_train=TrainConfig(epochs=1, batch_size=8, lr=0.05))


def simulation(tmp_path: Path, method: str, **strategy) -> SimulationConfig:
    return SimulationConfig(
        data=write_npz(tmp_path / "private.npz", seed=1), participants=3, rounds=2,
        device="cpu", partition=PartitionConfig(alpha=1.0, min_size=5, seed=0),
        strategy=StrategyConfig(method=method, model=SPEC,
                                local=TrainConfig(epochs=1, batch_size=16, lr=0.05), **strategy))


def public(tmp_path: Path, **fields) -> PublicDataConfig:
    return PublicDataConfig(data=write_npz(tmp_path / "public.npz", seed=2),
                            train=TrainConfig(epochs=3, batch_size=16, lr=0.05), **fields)


def test_prior_only_trains_on_as_many_prior_samples_as_feddgm_and_asks_nobody(tmp_path):
    """prior_only gives participants no task and trains on FedDGM's number of images."""
    cfg = simulation(tmp_path, "prior_only", feddgm=feddgm_section())
    strategy = build_strategy(cfg.strategy)
    strategy.initialize(0)
    assert strategy.configure_round(1, ["p00", "p01", "p02"]) == {}
    result = run_simulation(cfg)
    feddgm = run_simulation(replace(cfg, strategy=replace(cfg.strategy, method="feddgm")))
    counts = [r.metrics["synthetic_images"] for r in result.history]
    assert counts == [r.metrics["synthetic_images"] for r in feddgm.history] == [24, 48]
    sets = result.strategy.synthetic_sets()
    assert len(sets) == 3
    assert next(iter(sets.values())).labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    again = run_simulation(cfg)
    for name, value in result.strategy.evaluation_model().state_dict().items():
        assert torch.equal(value, again.strategy.evaluation_model().state_dict()[name])


def test_prior_only_refuses_a_label_free_prior(tmp_path):
    """A label-free prior has no class to sample: prior_only says so in one sentence."""
    gen = random_generator(GeneratorConfig(num_classes=1, image_size=8, conditional=False),
                           seed=0)
    path = save_generator(gen, tmp_path / "free.safetensors")
    section = feddgm_section(prior="trained", generator_path=path)
    with pytest.raises(ConfigError, match="label-free prior"):
        run_simulation(simulation(tmp_path, "prior_only", feddgm=section))


def test_public_only_learns_from_public_data_alone(tmp_path):
    """public_only trains once on the public data, asks no participant, and learns the task."""
    cfg = simulation(tmp_path, "public_only", public=public(tmp_path))
    result = run_simulation(cfg)
    assert result.history[0].metrics["public_seconds"] > 0
    assert result.history[1].metrics["public_seconds"] == 0
    assert result.history[0].participants and result.history[-1].accuracy > 0.6
    assert result.history[0].accuracy == result.history[1].accuracy


@pytest.mark.parametrize("method", ["fedavg", "fedprox", "feddgm"])
def test_pretrained_start_is_the_public_only_model(tmp_path, method):
    """pretrain = true starts from exactly the weights public_only trains (same seed; FedDGM's
    surrogate, built first; its global model is trained the same way from its own init)."""
    pub = public(tmp_path, pretrain=True)
    cfg = simulation(tmp_path, method, public=pub, feddgm=feddgm_section())
    strategy = build_strategy(cfg.strategy)
    strategy.initialize(0)
    reference = build_strategy(replace(cfg.strategy, method="public_only",
                                       public=replace(pub, pretrain=False)))
    reference.initialize(0)
    reference.aggregate_round(1, [])
    expected = reference.evaluation_model().state_dict()
    model = strategy._surrogate if method == "feddgm" else strategy.evaluation_model()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name])
    x, y = reference_test(tmp_path)
    assert evaluate(strategy.evaluation_model(), x, y).accuracy > 0.6


def test_a_grid_trains_each_public_model_once(tmp_path):
    """The same public data, seed and initial weights give the same model, so a process trains
    it once (every alpha and pretrained method of a grid shares it); another init trains anew."""
    from latentfl.strategies.public import train_on_public

    pub = public(tmp_path)
    first, second, other = (SPEC.build() for _ in range(3))
    second.load_state_dict(first.state_dict())
    train_on_public(first, pub, seed=0)
    (tmp_path / "public.npz").unlink()  # a repeat must not need the data again
    train_on_public(second, pub, seed=0)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name])
    with pytest.raises(DataError, match="does not exist"):
        train_on_public(other, pub, seed=0)


def reference_test(tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The private set's test split, normalised as the simulator does."""
    from latentfl.data import evaluation_tensors, load_dataset

    return evaluation_tensors(load_dataset(write_npz(tmp_path / "private.npz", seed=1)))


def test_pretrain_needs_public_data_and_a_method_that_can_use_it():
    """pretrain without data, or on a method that cannot start from it, is a config error."""
    with pytest.raises(ConfigError, match="public.data is empty"):
        from_dict(StrategyConfig, {"method": "fedavg", "public": {"pretrain": True}})
    with pytest.raises(ConfigError, match="applies to fedavg, fedprox, feddgm"):
        from_dict(StrategyConfig, {"method": "dynafed",
                                   "public": {"pretrain": True, "data": "npz:x.npz"}})


def test_grid_runs_every_baseline_beside_the_methods(tmp_path):
    """An experiment grid lists the baselines and *_pretrained starts like any method."""
    methods = ["fedavg", "fedavg_pretrained", "fedprox_pretrained", "public_only", "prior_only"]
    cfg = from_dict(ExperimentConfig, {
        "output": str(tmp_path / "out"), "methods": methods, "alphas": [1.0], "seeds": [0],
        "simulation": {
            "data": write_npz(tmp_path / "private.npz", seed=1), "participants": 2, "rounds": 1,
            "device": "cpu", "partition": {"min_size": 5},
            "strategy": {
                "model": {"num_classes": 4, "in_shape": [3, 8, 8],
                          "options": {"width": 4, "depth": 1}},
                "public": {"data": write_npz(tmp_path / "public.npz", seed=2),
                           "train": {"epochs": 2, "batch_size": 16, "lr": 0.05}},
                "feddgm": {"ipc": 1, "device": "cpu", "mean": [0.5] * 3, "std": [0.25] * 3,
                           "distill": {"iterations": 1, "steps": 1, "log_every": 0},
                           "global_train": {"epochs": 1, "batch_size": 8}},
            },
        },
    })
    cells = {c.method: c.simulation.strategy for c in grid(cfg)}
    assert cells["fedavg_pretrained"].method == "fedavg" and cells["fedavg_pretrained"].public.pretrain
    assert cells["fedprox_pretrained"].method == "fedprox"
    assert not cells["fedavg"].public.pretrain
    assert cells["prior_only"].feddgm.global_model.options == {"width": 4, "depth": 1}
    result = run_experiment(cfg, progress=False)
    assert sorted(row["method"] for row in result.rows) == sorted(methods)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "fedavg_pretrained" in table and "prior_only" in table


def test_grid_refuses_pretrained_methods_without_public_data(tmp_path):
    """A *_pretrained method with no public data is refused before anything runs."""
    with pytest.raises(ConfigError, match="need the public data"):
        from_dict(ExperimentConfig, {"output": str(tmp_path), "methods": ["fedavg_pretrained"]})


def test_demo_prior_only_row_uses_feddgms_prior_and_server_training():
    """The demo's prior_only row has FedDGM's prior, set size and server training exactly."""
    from latentfl.demo import BASELINES, strategy

    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    assert BASELINES == ("prior_only",)
    prior, feddgm = strategy("prior_only", mean, std), strategy("feddgm", mean, std)
    assert prior.method == "prior_only" and prior.feddgm == feddgm.feddgm
    assert prior.feddgm.distill.generator_path is not None


@pytest.mark.parametrize("method", ["prior_only", "public_only"])
def test_a_coordinator_refuses_a_server_only_baseline(tmp_path, method):
    """A coordinator given a baseline that asks participants nothing refuses it at start in one
    sentence, instead of opening rounds with no task."""
    from daemon_helpers import STRATEGY, make_consortium

    consortium = make_consortium(tmp_path, ["p00", "p01"])
    with pytest.raises(ConfigError, match="baseline the server runs alone"):
        consortium.coordinator_config(strategy={**STRATEGY, "method": method,
                                                "public": {"data": "builtin:cifar10-mini"}})
