"""The FedAvg family's server-side arithmetic and the strategy port's boundaries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import latentfl.privacy
from latentfl.models import model_manifest
from latentfl.strategies import (
    FedAvg,
    FedNova,
    FedProx,
    ModelSpec,
    StrategyConfig,
    Update,
    build_strategy,
    select_participants,
    weighted_mean,
)
from latentfl.strategies.fedavg import fednova_normaliser, normalised_weights
from latentfl.training import TrainConfig

SPEC = ModelSpec(
    name="convnet", num_classes=3, in_shape=(3, 8, 8), options={"width": 4, "depth": 1}
)


def shifted(global_weights, delta: float):
    return {k: v + delta for k, v in global_weights.items()}


def test_fedavg_is_the_example_weighted_mean():
    """FedAvg's new global is sum n_k w_k / sum n_k over the returned weights."""
    s = FedAvg(SPEC, TrainConfig())
    s.initialize(seed=0)
    g = s.global_weights()
    updates = [Update("a", 1, shifted(g, 1.0), 30, 5), Update("b", 1, shifted(g, -2.0), 10, 5)]
    s.aggregate_round(1, updates)
    for name, value in s.global_weights().items():
        torch.testing.assert_close(value, g[name] + (30 * 1.0 + 10 * -2.0) / 40)


def test_unweighted_fedavg_and_weighted_mean_helper():
    """weighted=False averages participants equally."""
    s = FedAvg(SPEC, TrainConfig(), weighted=False)
    s.initialize(seed=0)
    g = s.global_weights()
    s.aggregate_round(
        1, [Update("a", 1, shifted(g, 1.0), 30, 5), Update("b", 1, shifted(g, 3.0), 10, 5)]
    )
    name = next(iter(g))
    torch.testing.assert_close(s.global_weights()[name], g[name] + 2.0)
    out = weighted_mean([{"x": torch.ones(2)}, {"x": torch.zeros(2)}], [3, 1])
    torch.testing.assert_close(out["x"], torch.full((2,), 0.75))


def test_fedprox_puts_mu_in_the_task_only():
    """FedProx differs from FedAvg by the proximal coefficient carried in each task."""
    s = FedProx(SPEC, TrainConfig(), mu=0.3)
    s.initialize(seed=0)
    tasks = s.configure_round(1, ["a", "b"])
    assert {t.train.prox_mu for t in tasks.values()} == {0.3}
    plain = FedAvg(SPEC, TrainConfig())
    plain.initialize(seed=0)
    assert plain.configure_round(1, ["a"])["a"].train.prox_mu == 0.0


def _fednova_upload(s: FedNova, g, shift: float, steps: int) -> Update:
    """What a participant returns after moving every weight by ``shift`` in ``steps`` steps."""
    z = normalised_weights(g, shifted(g, shift), steps, s.local)
    return Update("a", 1, z, 10, steps)


def test_fednova_normalises_by_local_steps():
    """FedNova: w - tau_eff * sum p_i (w - w_i)/tau_i; equal steps reduce to FedAvg; the mean
    of the normalised uploads with (examples, steps) gives the same as aggregate_round."""
    s = FedNova(SPEC, TrainConfig(optimizer="sgd", momentum=0.0))
    s.initialize(seed=0)
    g = s.global_weights()
    assert all(t.normalised_update for t in s.configure_round(1, ["a", "b"]).values())
    # a moved by 1.0 in 2 steps, b by 3.0 in 6 steps; equal data weight.
    uploads = [_fednova_upload(s, g, -1.0, 2), _fednova_upload(s, g, -3.0, 6)]
    s.aggregate_round(1, uploads)
    tau_eff = 0.5 * 2 + 0.5 * 6
    expected_shift = -tau_eff * (0.5 * 1.0 / 2 + 0.5 * 3.0 / 6)
    name = next(iter(g))
    torch.testing.assert_close(s.global_weights()[name], g[name] + expected_shift)
    hidden = FedNova(SPEC, TrainConfig(optimizer="sgd", momentum=0.0))
    hidden.initialize(seed=0)
    mean = {k: (uploads[0].weights[k] + uploads[1].weights[k]) / 2 for k in g}
    hidden.accept_aggregate(1, mean, 20, steps=[(10, 2), (10, 6)])
    torch.testing.assert_close(hidden.global_weights()[name], s.global_weights()[name])
    same = FedNova(SPEC, TrainConfig())
    same.initialize(seed=0)
    same.aggregate_round(1, [_fednova_upload(same, g, -1.0, 4), _fednova_upload(same, g, -3.0, 4)])
    torch.testing.assert_close(same.global_weights()[name], g[name] - 2.0)


def test_fednova_momentum_normaliser():
    """With momentum rho the normaliser is (tau - rho(1-rho^tau)/(1-rho))/(1-rho)."""
    rho, tau = 0.9, 5
    expected = (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)
    assert fednova_normaliser(tau, rho) == pytest.approx(expected)
    assert fednova_normaliser(tau, 0.0) == tau


def test_aggregate_refuses_wrong_round_and_empty():
    """A strategy never averages an empty set or an update of another round."""
    from latentfl.errors import ConfigError

    s = build_strategy(StrategyConfig(model=SPEC))
    s.initialize(seed=0)
    with pytest.raises(ConfigError, match="no accepted updates"):
        s.aggregate_round(1, [])
    with pytest.raises(ConfigError, match="round 2"):
        s.aggregate_round(1, [Update("a", 2, s.global_weights(), 1, 1)])


def test_checkpoint_round_trip():
    """state_dict / load_state_dict restore the global weights exactly."""
    s = build_strategy(StrategyConfig(model=SPEC))
    s.initialize(seed=1)
    tensors, meta = s.state_dict()
    t = build_strategy(StrategyConfig(model=SPEC))
    t.initialize(seed=2)
    t.load_state_dict(tensors, meta)
    for name, value in s.global_weights().items():
        assert torch.equal(value, t.global_weights()[name])


def test_selection_is_deterministic_and_sized():
    """The same seed and round pick the same participants; fraction sets how many."""
    ids = [f"p{i}" for i in range(10)]
    a = select_participants(ids, 0.4, seed=3, round=7)
    assert a == select_participants(ids, 0.4, seed=3, round=7)
    assert len(a) == 4 and a == sorted(a)
    assert select_participants(ids, 1.0, seed=3, round=7) == ids
    assert any(select_participants(ids, 0.4, seed=3, round=r) != a for r in range(8, 12))


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        ("latentfl.strategies, latentfl.simulate", ("zmq", "latentfl.platform")),
        ("latentfl.privacy", ("latentfl.platform",)),
    ],
)
def test_lower_layers_import_nothing_from_above(modules, forbidden):
    """strategies and simulate never import zmq or the platform; privacy never the platform."""
    code = (
        f"import sys, {modules}; "
        f"bad = [m for m in sys.modules if any(m == f or m.startswith(f + '.') "
        f"for f in {forbidden!r})]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_privacy_sources_never_import_the_platform():
    """No module of latentfl.privacy imports latentfl.platform, not even inside a function."""
    root = Path(latentfl.privacy.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("latentfl.platform")]
    assert offenders == []


def test_a_model_specs_manifest_is_its_models_and_is_built_once_per_spec():
    """ModelSpec.manifest() is the manifest of the model the spec builds; an equal spec gets
    the same one back without a build, another spec its own."""
    spec = ModelSpec(options={"width": 8, "depth": 2})
    assert spec.manifest() == model_manifest(spec.build())
    assert ModelSpec(options={"depth": 2, "width": 8}).manifest() is spec.manifest()
    wider = ModelSpec(options={"width": 16, "depth": 2})
    assert wider.manifest() == model_manifest(wider.build()) != spec.manifest()
