"""DP-SGD through latentfl.training.train with the ledger advanced by the optimizer hook."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn

from latentfl.errors import ConfigError, ModelError
from latentfl.models import build_model, flatten_params
from latentfl.privacy import (
    DPSGDConfig,
    PrivacyLedger,
    dp_compatible,
    make_private,
    resolve_noise_multiplier,
)
from latentfl.training import TrainConfig, train

DELTA = 1e-5


def _data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", 4, (3, 8, 8), depth=1, width=8)


def test_dp_wrap_trains_and_ledger_advances_by_exactly_the_steps(tmp_path):
    """A DP round changes the weights and the ledger gains exactly the optimizer steps taken."""
    x, y = _data()
    model = _tiny_model()
    before = flatten_params(model)
    ledger = PrivacyLedger.open(tmp_path, delta=DELTA)
    config = TrainConfig(epochs=2, batch_size=16, lr=0.1, seed=1)
    with make_private(
        ledger=ledger, round_=3, noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=0
    ) as wrap:
        result = train(model, x, y, config, wrap=wrap)
    assert result.steps > 0
    assert wrap.steps == result.steps
    assert wrap.sample_rate == pytest.approx(16 / 96)
    assert not torch.equal(before, flatten_params(model))  # the caller's model was trained
    assert not hasattr(model, "autograd_grad_sample_hooks")  # hooks removed on exit
    reloaded = PrivacyLedger.load(tmp_path)
    assert reloaded.total_steps == result.steps
    (row,) = reloaded.rows
    assert (row.round, row.steps, row.noise_multiplier, row.max_grad_norm) == (
        3,
        result.steps,
        1.0,
        1.0,
    )
    acc = RDPAccountant()
    for _ in range(result.steps):
        acc.step(noise_multiplier=1.0, sample_rate=wrap.sample_rate)
    assert reloaded.epsilon() == pytest.approx(acc.get_epsilon(delta=DELTA))


def test_second_round_adds_to_the_same_ledger(tmp_path):
    """Two rounds on one model: steps add up and the epsilon grows."""
    x, y = _data()
    model = _tiny_model()
    ledger = PrivacyLedger.open(tmp_path, delta=DELTA)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, max_steps=2)
    totals = []
    for r in (1, 2):
        with make_private(ledger=ledger, round_=r, noise_multiplier=1.2, max_grad_norm=0.5) as wrap:
            train(model, x, y, config, wrap=wrap)
        totals.append((ledger.total_steps, ledger.epsilon()))
    assert totals[0][0] == 2 and totals[1][0] == 4
    assert totals[1][1] > totals[0][1]


def test_large_logical_batches_split_by_memory_manager(tmp_path):
    """With a physical batch cap, the ledger counts logical (Poisson) steps, not chunks."""
    x, y = _data(n=64)
    model = _tiny_model()
    ledger = PrivacyLedger.open(tmp_path, delta=DELTA)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=2)
    seen: list[int] = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    with make_private(
        ledger=ledger, round_=1, noise_multiplier=1.0, max_grad_norm=1.0, max_physical_batch_size=8
    ) as wrap:
        result = train(model, x, y, config, wrap=wrap)
    assert ledger.total_steps == wrap.steps == result.steps == 2  # 64 / 32 logical steps
    assert max(seen) <= 8 and len(seen) > 2  # physical chunks of at most 8 examples


def test_batchnorm_refused_until_made_compatible(tmp_path):
    """A BatchNorm model is refused by the wrap; dp_compatible replaces it and trains."""
    x, y = _data(n=32)
    bn_model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4)
    )
    ledger = PrivacyLedger.open(tmp_path, delta=DELTA)
    config = TrainConfig(epochs=1, batch_size=16, lr=0.05)
    with (
        pytest.raises(ModelError, match="dp_compatible"),
        make_private(ledger=ledger, round_=1, noise_multiplier=1.0, max_grad_norm=1.0) as wrap,
    ):
        train(bn_model, x, y, config, wrap=wrap)
    fixed = dp_compatible(bn_model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    with make_private(ledger=ledger, round_=1, noise_multiplier=1.0, max_grad_norm=1.0) as wrap:
        result = train(fixed, x, y, config, wrap=wrap)
    assert ledger.total_steps == result.steps


def test_secure_mode_without_csprng_is_a_config_error(tmp_path):
    """secure_mode needs torchcsprng; without it the wrap says so instead of running insecurely."""
    pytest.importorskip("opacus")
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torchcsprng is installed here")
    x, y = _data(n=32)
    ledger = PrivacyLedger.open(tmp_path, delta=DELTA)
    with (
        pytest.raises(ConfigError, match="torchcsprng"),
        make_private(
            ledger=ledger, round_=1, noise_multiplier=1.0, max_grad_norm=1.0, secure_mode=True
        ) as wrap,
    ):
        train(_tiny_model(), x, y, TrainConfig(batch_size=16), wrap=wrap)
    assert ledger.total_steps == 0
    problems = DPSGDConfig(enabled=True, noise_multiplier=1.0, secure_mode=True).problems()
    assert any("torchcsprng" in p for p in problems)  # refused when the config is loaded


def test_noise_multiplier_resolved_once_for_the_whole_run():
    """A target epsilon resolves to the noise for all planned rounds, same every round."""
    config = DPSGDConfig(enabled=True, target_epsilon=3.0, planned_rounds=4)
    sigma = resolve_noise_multiplier(
        config, num_examples=1000, batch_size=50, epochs=1, delta=DELTA
    )
    one = resolve_noise_multiplier(
        DPSGDConfig(enabled=True, target_epsilon=3.0),
        num_examples=1000,
        batch_size=50,
        epochs=1,
        delta=DELTA,
    )
    assert sigma > one
    given = DPSGDConfig(enabled=True, noise_multiplier=0.7)
    assert (
        resolve_noise_multiplier(given, num_examples=10, batch_size=5, epochs=1, delta=DELTA) == 0.7
    )
    assert DPSGDConfig(enabled=True).problems()  # neither epsilon nor noise


def test_seeded_dp_training_is_deterministic_on_cpu(tmp_path):
    """The same config and noise seed give the same weights (Poisson draws and noise seeded)."""
    x, y = _data(n=64)
    config = TrainConfig(epochs=1, batch_size=16, lr=0.1, seed=5)
    results = []
    for run in ("a", "b"):
        model = _tiny_model()
        ledger = PrivacyLedger.open(tmp_path / run, delta=DELTA)
        with make_private(
            ledger=ledger, round_=1, noise_multiplier=1.0, max_grad_norm=1.0, noise_seed=11
        ) as wrap:
            train(model, x, y, config, wrap=wrap)
        results.append(flatten_params(model))
    assert torch.equal(results[0], results[1])
