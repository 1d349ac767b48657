"""Tests of latentfl.training: the one local training loop and the evaluation loop."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentfl.config import describe, from_dict
from latentfl.errors import ConfigError, DataError, ModelError
from latentfl.models import build_model, flatten_params
from latentfl.training import EvalResult, TrainConfig, augment_batch, evaluate, train


def separable(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 1x8x8 images: class 0 darker, class 1 brighter, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 8, 8, generator=gen) * 0.5 + (2.0 * y - 1.0)[:, None, None, None]
    return x, y


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("convnet", 2, (1, 8, 8), width=4, depth=2)


def test_train_config_is_a_config_schema():
    """TrainConfig reads from a TOML-shaped table with bounds checked and every field documented."""
    cfg = from_dict(TrainConfig, {"lr": 0.1, "optimizer": "adam", "max_steps": 5})
    assert (cfg.lr, cfg.optimizer, cfg.max_steps, cfg.epochs) == (0.1, "adam", 5, 1)
    with pytest.raises(ConfigError) as err:
        from_dict(TrainConfig, {"lr": 0.0, "optimizer": "rmsprop", "batch": 3})
    message = str(err.value)
    assert "'lr' = 0.0" in message and "'rmsprop'" in message and "unknown key 'batch'" in message
    assert all(row[3] for row in describe(TrainConfig))
    with pytest.raises(ConfigError, match="sgd only"):
        from_dict(TrainConfig, {"optimizer": "adam", "momentum": 0.9})
    assert hash(TrainConfig()) == hash(TrainConfig())


def test_train_reduces_loss_on_a_separable_problem():
    """A few epochs of SGD take a tiny ConvNet from chance to near-perfect accuracy."""
    x, y = separable()
    model = small_model()
    before = evaluate(model, x, y)
    result = train(model, x, y, TrainConfig(epochs=5, batch_size=16, lr=0.05, momentum=0.9))
    after = evaluate(model, x, y)
    assert after.loss < before.loss * 0.5
    assert after.accuracy >= 0.95
    assert (result.steps, result.examples) == (20, 320)
    assert 0 < result.loss < before.loss


def test_adam_and_augmentation_also_train():
    """Adam with augmentation and weight decay still learns the separable problem."""
    x, y = separable()
    model = small_model()
    before = evaluate(model, x, y).loss
    train(model, x, y, TrainConfig(epochs=4, batch_size=16, lr=0.01, optimizer="adam",
                                   weight_decay=1e-4, augment=True))
    assert evaluate(model, x, y).loss < before


def test_same_seed_gives_bit_identical_weights():
    """Two runs with the same init and seed end with identical weights; another seed differs."""
    x, y = separable()
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, momentum=0.9, augment=True, seed=3)
    runs = []
    for seed in (3, 3, 4):
        model = small_model()
        train(model, x, y, dataclasses.replace(cfg, seed=seed))
        runs.append(flatten_params(model))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_prox_term_keeps_weights_closer_to_the_start():
    """With prox_mu > 0 the weights end closer to where training started than with prox_mu = 0."""
    x, y = separable()
    start = flatten_params(small_model())
    distance = {}
    for mu in (0.0, 1.0):
        model = small_model()
        train(model, x, y, TrainConfig(epochs=3, batch_size=8, lr=0.1, prox_mu=mu))
        distance[mu] = (flatten_params(model) - start).norm().item()
    assert distance[1.0] < 0.9 * distance[0.0]


def test_prox_matches_a_loss_term_reference():
    """The prox gradient equals that of mu/2 ||w - w_start||^2 added to a full-batch loss."""
    x, y = separable(16)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.1, momentum=0.9, weight_decay=1e-3, prox_mu=0.5)
    model = small_model()
    train(model, x, y, cfg)

    reference = small_model()
    start = [p.detach().clone() for p in reference.parameters()]
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(4):
        prox = sum(((p - s) ** 2).sum() for p, s in zip(reference.parameters(), start, strict=True))
        loss = F.cross_entropy(reference(x), y) + 0.5 / 2 * prox
        opt.zero_grad()
        loss.backward()
        opt.step()
    expected = flatten_params(reference)
    torch.testing.assert_close(flatten_params(model), expected, rtol=1e-4, atol=1e-5)


def test_max_steps_caps_training():
    """max_steps stops training mid-epoch and counts examples actually seen."""
    x, y = separable()
    result = train(small_model(), x, y, TrainConfig(epochs=3, batch_size=10, max_steps=4))
    assert (result.steps, result.examples) == (4, 40)


def test_step_and_example_counts_over_epochs():
    """Steps count every batch, including the short last one, over all epochs."""
    x, y = separable(10)
    result = train(small_model(), x, y, TrainConfig(epochs=2, batch_size=4))
    assert (result.steps, result.examples) == (6, 20)


def test_wrap_replaces_model_optimizer_and_loader_and_empty_batches_still_step():
    """wrap's returned objects drive the loop; an empty (Poisson) batch still takes its step."""
    x, y = separable(12)
    seen = {}

    def wrap(model, optimizer, loader):
        seen["batch_size"] = loader.batch_size
        batches = [(x[:0], y[:0]), (x[:5], y[:5]), (x[:0], y[:0]), (x[5:7], y[5:7])]
        return model, optimizer, batches

    result = train(small_model(), x, y, TrainConfig(epochs=2, batch_size=4), wrap=wrap)
    assert seen["batch_size"] == 4
    assert (result.steps, result.examples) == (8, 14)


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook is firing")
def test_opacus_private_training_runs_with_prox():
    """The loop runs under Opacus DP-SGD (Poisson batches); the prox pull survives the DP step."""
    opacus = pytest.importorskip("opacus")
    x, y = separable()
    start = flatten_params(small_model())
    distance = {}
    for mu in (0.0, 5.0):
        def wrap(model, optimizer, loader):
            engine = opacus.PrivacyEngine(accountant="rdp")
            return engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                       noise_multiplier=0.0, max_grad_norm=10.0)

        torch.manual_seed(0)
        model = small_model()
        result = train(model, x, y, TrainConfig(epochs=3, batch_size=8, lr=0.1, prox_mu=mu),
                       wrap=wrap)
        assert result.steps > 0
        distance[mu] = (flatten_params(model) - start).norm().item()
    assert distance[5.0] < 0.9 * distance[0.0]


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook is firing")
def test_opacus_physical_batches_and_empty_draws_count_logical_steps():
    """Under Opacus with physical batches and an empty draw, steps are the DP steps taken."""
    opacus = pytest.importorskip("opacus")
    from opacus.utils.batch_memory_manager import wrap_data_loader

    x, y = separable()
    dp_steps = []
    physical = []

    def wrap(model, optimizer, loader):
        engine = opacus.PrivacyEngine(accountant="rdp")
        model, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            noise_multiplier=1.0, max_grad_norm=1.0)
        optimizer.attach_step_hook(lambda opt: dp_steps.append(1))
        batches = list(wrap_data_loader(data_loader=loader, max_batch_size=3, optimizer=optimizer))
        optimizer.signal_skip_step(do_skip=False)  # an empty draw, signalled as Opacus does
        batches.append((x[:0], y[:0]))
        physical.extend(batches)
        return model, optimizer, batches

    torch.manual_seed(0)
    model = small_model()
    before = flatten_params(model)
    result = train(model, x, y, TrainConfig(batch_size=16, lr=0.1), wrap=wrap)
    assert result.steps == len(dp_steps) == 5  # 4 Poisson draws of expected size 16, 1 empty
    assert len(physical) > result.steps
    assert result.examples == sum(len(xb) for xb, _ in physical)
    assert not torch.equal(before, flatten_params(model))


def test_non_finite_loss_names_the_step():
    """A non-finite loss raises ModelError naming the step at which it happened."""
    x, y = separable(16)
    x[9] = float("nan")
    with pytest.raises(ModelError, match="at step 3"):
        train(small_model(), x, y, TrainConfig(batch_size=4, seed=0), wrap=_in_order)


def _in_order(model, optimizer, loader):
    return model, optimizer, [(xb, yb) for xb, yb in zip(loader.dataset.tensors[0].split(4),
                                                         loader.dataset.tensors[1].split(4),
                                                         strict=True)]


def test_bad_data_is_refused():
    """Mismatched or mistyped inputs raise DataError before training."""
    x, y = separable(8)
    with pytest.raises(DataError, match="labels"):
        train(small_model(), x, y[:4], TrainConfig())
    with pytest.raises(DataError, match="images"):
        evaluate(small_model(), x[:, 0], y)
    with pytest.raises(DataError, match="empty"):
        evaluate(small_model(), x[:0], y[:0])


def test_evaluate_on_a_constructed_case():
    """Accuracy and loss match a hand-built linear classifier on four points (batches of 3)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))
    # logits equal the inputs; predictions 0, 1, 1, 0; labels 0, 1, 0, 0 -> 3 of 4 right
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0], [5.0, 1.0]]).view(4, 1, 1, 2)
    y = torch.tensor([0, 1, 0, 0])
    logits = x.view(4, 2)
    expected_loss = (logits.logsumexp(1) - logits[torch.arange(4), y]).mean().item()
    result = evaluate(model, x, y, batch_size=3)
    assert result == EvalResult(accuracy=0.75, loss=pytest.approx(expected_loss), n=4)
    assert model.training


def test_train_and_evaluate_restore_the_training_mode():
    """train and evaluate leave the model in the mode they found it."""
    x, y = separable(8)
    model = small_model().eval()
    train(model, x, y, TrainConfig(max_steps=1))
    assert not model.training
    evaluate(model.train(), x, y)
    assert model.training


def test_augment_batch_matches_a_per_image_reference():
    """The batched crop and flip equal cropping and flipping each image alone, same draws."""
    x = torch.randn(6, 3, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    dy = torch.randint(0, 9, (6,), generator=gen)
    dx = torch.randint(0, 9, (6,), generator=gen)
    flip = torch.rand(6, generator=gen) < 0.5
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(6):
        crop = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop)
    assert flip.any() and not flip.all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_and_evaluate_on_cuda():
    """Training on CUDA learns the separable problem and augmentation crops as on the CPU."""
    x, y = separable()
    model = small_model()
    train(model, x, y, TrainConfig(epochs=5, batch_size=16, lr=0.05, momentum=0.9, augment=True),
          device="cuda")
    assert evaluate(model, x, y, device="cuda").accuracy >= 0.9
    cpu = augment_batch(x, torch.Generator().manual_seed(1))
    gpu = augment_batch(x.cuda(), torch.Generator().manual_seed(1))
    assert torch.equal(cpu, gpu.cpu())
