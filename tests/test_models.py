"""Tests of latentfl.models: architectures, registry, flat parameters, manifests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentfl.errors import ModelError
from latentfl.models import (
    MODEL_NAMES,
    build_model,
    flatten_params,
    functional_forward,
    load_flat_,
    load_tensors_,
    model_manifest,
    model_options,
    num_params,
    param_shapes,
    state_to_tensors,
    unflatten_params,
)

# Small variants of every architecture, so forward + backward stays fast on CPU.
SMALL = {
    "convnet": {"width": 8, "depth": 2},
    "resnet18": {"width": 4},
    "resnet34": {"width": 4},
    "vgg11": {"width": 8},
    "alexnet": {"width": 8},
    "vit": {"dim": 32, "depth": 2, "heads": 4, "mlp_dim": 48},
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_convnet(**options) -> nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", 3, (2, 4, 4), **{"width": 2, "depth": 1, **options})


def test_default_convnet_has_320010_parameters():
    """The default ConvNet on 3x32x32 with 10 classes has exactly 320,010 parameters."""
    assert count(build_model("convnet", 10, (3, 32, 32))) == 320_010


def test_default_resnet18_matches_the_standard_cifar_count():
    """ResNet-18 (3x3 stem, no max-pool) has the well-known 11,173,962 parameters for CIFAR-10."""
    assert count(build_model("resnet18", 10, (3, 32, 32))) == 11_173_962


def test_every_name_is_registered_with_small_options():
    """The test table covers exactly the registered architectures."""
    assert set(SMALL) == set(MODEL_NAMES)
    assert set(MODEL_NAMES) == {"convnet", "resnet18", "resnet34", "vgg11", "alexnet", "vit"}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_and_backward_on_cpu(name):
    """Each architecture maps (N, 3, 32, 32) to (N, classes) and gives every parameter a grad."""
    torch.manual_seed(0)
    model = build_model(name, 7, (3, 32, 32), **SMALL[name])
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "vgg11", "alexnet", "vit"])
def test_default_sizes_forward(name):
    """Each architecture at its default size runs on a 32x32 batch."""
    torch.manual_seed(0)
    with torch.no_grad():
        assert build_model(name, 10, (3, 32, 32))(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("norm", ["instance", "group", "batch", "layer", "none"])
@pytest.mark.parametrize("pooling", ["avg", "max", "none"])
def test_convnet_norm_and_pooling_options(norm, pooling):
    """Every ConvNet norm and pooling option builds and runs forward and backward."""
    model = build_model("convnet", 4, (1, 8, 8), width=4, depth=2, norm=norm, pooling=pooling)
    model(torch.randn(3, 1, 8, 8)).sum().backward()
    spatial = 8 * 8 if pooling == "none" else 2 * 2
    assert model.classifier.in_features == 4 * spatial


def test_instance_norm_is_one_group_per_channel():
    """norm='instance' is an affine GroupNorm with as many groups as channels."""
    norm = build_model("convnet", 10, (3, 32, 32), width=16).features[1]
    assert isinstance(norm, nn.GroupNorm)
    assert (norm.num_groups, norm.num_channels, norm.affine) == (16, 16, True)


def test_resnet_batch_norm_option():
    """resnet18 uses GroupNorm by default and BatchNorm with norm='batch'."""
    kinds = {type(m) for m in build_model("resnet18", 10, (3, 32, 32), width=4).modules()}
    assert nn.GroupNorm in kinds and nn.BatchNorm2d not in kinds
    batch = build_model("resnet18", 10, (3, 32, 32), width=4, norm="batch")
    kinds = {type(m) for m in batch.modules()}
    assert nn.BatchNorm2d in kinds and nn.GroupNorm not in kinds


def test_unknown_model_name_lists_the_valid_ones():
    """An unknown architecture name raises ModelError naming it and the registered names."""
    with pytest.raises(ModelError, match=r"'lenet' is not known.*convnet, resnet18"):
        build_model("lenet", 10, (3, 32, 32))


def test_unknown_option_lists_the_valid_ones():
    """An unknown option raises ModelError naming it and listing the valid options."""
    expected = r"no option 'widht'; valid options: depth, norm, pooling, width"
    with pytest.raises(ModelError, match=expected):
        build_model("convnet", 10, (3, 32, 32), widht=3)


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("convnet", {"norm": "weird"}, "norm='weird'"),
        ("convnet", {"pooling": "sum"}, "pooling='sum'"),
        ("convnet", {"depth": 0}, "depth=0"),
        ("convnet", {"depth": 6}, "shrinks"),
        ("resnet18", {"width": 2.5}, "width=2.5"),
        ("vit", {"dim": 30, "heads": 4}, "not divisible"),
        ("vit", {"patch": 5}, "does not tile"),
    ],
)
def test_invalid_option_values_are_refused(name, options, pattern):
    """An invalid option value raises ModelError naming the option and the value."""
    with pytest.raises(ModelError, match=pattern):
        build_model(name, 10, (3, 32, 32), **options)


def test_invalid_shape_and_classes_are_refused():
    """A bad in_shape or num_classes raises ModelError."""
    with pytest.raises(ModelError, match="in_shape"):
        build_model("convnet", 10, (32, 32))
    with pytest.raises(ModelError, match="num_classes"):
        build_model("convnet", 0, (3, 32, 32))


def test_model_options_gives_defaults():
    """model_options reports each option with its default."""
    convnet = {"width": 128, "depth": 3, "norm": "instance", "pooling": "avg"}
    assert model_options("convnet") == convnet
    assert model_options("vit") == {"patch": 4, "dim": 512, "depth": 6, "heads": 8, "mlp_dim": 512}


def test_flatten_then_unflatten_is_identity():
    """unflatten_params(flatten_params(m)) gives back every parameter, in named_parameters order."""
    model = build_model("resnet18", 10, (3, 32, 32), width=4)
    shapes = param_shapes(model)
    flat = flatten_params(model)
    assert flat.shape == (num_params(shapes),) == (count(model),)
    params = unflatten_params(flat, shapes)
    assert list(params) == [name for name, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert torch.equal(params[name], p)
    assert torch.equal(flat[: model.stem[0].weight.numel()], model.stem[0].weight.reshape(-1))


def test_flatten_is_a_detached_copy():
    """Changing the flat vector leaves the model alone."""
    model = tiny_convnet()
    flat = flatten_params(model)
    flat.add_(1.0)
    assert not torch.equal(flat, flatten_params(model))
    assert not flat.requires_grad


def test_unflatten_refuses_a_wrong_length():
    """unflatten_params raises ModelError for a vector of the wrong length."""
    model = tiny_convnet()
    with pytest.raises(ModelError, match="expected"):
        unflatten_params(torch.zeros(3), param_shapes(model))


def test_load_flat_round_trip():
    """load_flat_ copies another model's flat vector in, after which both compute the same thing."""
    torch.manual_seed(1)
    a = build_model("vit", 10, (3, 16, 16), dim=16, depth=1, heads=2, mlp_dim=16)
    b = build_model("vit", 10, (3, 16, 16), dim=16, depth=1, heads=2, mlp_dim=16)
    assert not torch.equal(flatten_params(a), flatten_params(b))
    load_flat_(b, flatten_params(a))
    assert torch.equal(flatten_params(a), flatten_params(b))
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(a(x), b(x))


def test_functional_forward_matches_the_module():
    """functional_forward on the model's own flat vector equals model(x); the model is untouched."""
    model = build_model("convnet", 10, (3, 16, 16), width=8, depth=2)
    before = flatten_params(model)
    x = torch.randn(4, 3, 16, 16)
    out = functional_forward(model, flatten_params(model) * 1.0, x)
    torch.testing.assert_close(out, model(x))
    assert torch.equal(flatten_params(model), before)


def _directional(f, flat, direction, eps=1e-6):
    return (f(flat + eps * direction) - f(flat - eps * direction)) / (2 * eps)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_functional_forward_gradients_match_finite_differences(pooling):
    """First and second-order gradients wrt the flat vector match central differences (float64)."""
    model = tiny_convnet(pooling=pooling).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    flat0 = flatten_params(model)

    def loss(flat):
        return nn.functional.cross_entropy(functional_forward(model, flat, x), y)

    def grad_norm_sq(flat):  # what trajectory matching differentiates: a function of a gradient
        flat = flat.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(flat), flat, create_graph=True)
        return (g * g).sum()

    flat = flat0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(flat), flat, create_graph=True)
    (h,) = torch.autograd.grad((g * g).sum(), flat)
    for _ in range(3):
        d = torch.randn(flat0.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            numeric = _directional(loss, flat0, d)
            torch.testing.assert_close((g * d).sum(), numeric, rtol=1e-6, atol=1e-8)
        numeric = _directional(lambda f: grad_norm_sq(f).detach(), flat0, d)
        torch.testing.assert_close((h * d).sum(), numeric, rtol=1e-5, atol=1e-7)


def test_manifest_lists_float_state_and_has_a_stable_digest():
    """The manifest lists float state (BN running stats, not counters); same arch, same digest."""
    a = build_model("convnet", 10, (3, 8, 8), width=4, depth=1, norm="batch")
    names = [name for name, _, _ in model_manifest(a).entries]
    assert names == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                     "features.1.running_mean", "features.1.running_var",
                     "classifier.weight", "classifier.bias"]
    assert model_manifest(a).entries[0] == ("features.0.weight", (4, 3, 3, 3), "float32")
    b = build_model("convnet", 10, (3, 8, 8), width=4, depth=1, norm="batch")
    c = build_model("convnet", 10, (3, 8, 8), width=5, depth=1, norm="batch")
    assert model_manifest(a).digest == model_manifest(b).digest != model_manifest(c).digest
    assert len(model_manifest(a).digest) == 64
    model_manifest(a).check(state_to_tensors(b))


def _broken(kind: str) -> dict[str, torch.Tensor]:
    tensors = state_to_tensors(tiny_convnet())
    if kind == "missing":
        del tensors["classifier.bias"]
    elif kind == "extra":
        tensors["classifier.extra"] = torch.zeros(1)
    elif kind == "shape":
        tensors["classifier.bias"] = torch.zeros(4)
    elif kind == "dtype":
        tensors["classifier.bias"] = tensors["classifier.bias"].double()
    elif kind == "nan":
        tensors["features.0.weight"][0, 0, 0, 0] = float("nan")
    elif kind == "inf":
        tensors["features.0.weight"][0, 0, 0, 0] = float("-inf")
    elif kind == "not a tensor":
        tensors["classifier.bias"] = [0.0, 0.0, 0.0]
    return tensors


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        ("missing", "lack tensor 'classifier.bias'"),
        ("extra", "unexpected tensor 'classifier.extra'"),
        ("shape", r"'classifier.bias' has shape \(4,\); expected \(3,\)"),
        ("dtype", "'classifier.bias' has dtype float64; expected float32"),
        ("nan", "'features.0.weight' holds non-finite"),
        ("inf", "'features.0.weight' holds non-finite"),
        ("not a tensor", "'classifier.bias' is a list"),
    ],
)
def test_manifest_check_names_the_first_mismatch(kind, pattern):
    """manifest.check raises ModelError naming the mismatching tensor and what was expected."""
    with pytest.raises(ModelError, match=pattern):
        model_manifest(tiny_convnet()).check(_broken(kind))


def test_state_to_tensors_and_load_tensors_round_trip():
    """state_to_tensors gives detached CPU clones; load_tensors_ puts them into another model."""
    torch.manual_seed(0)
    a = build_model("convnet", 10, (3, 8, 8), width=4, depth=1, norm="batch")
    a(torch.randn(4, 3, 8, 8))  # moves the BatchNorm running statistics off their defaults
    tensors = state_to_tensors(a)
    assert all(t.device.type == "cpu" and not t.requires_grad for t in tensors.values())
    tensors["classifier.bias"].add_(1.0)
    assert not torch.equal(tensors["classifier.bias"], a.classifier.bias)
    b = build_model("convnet", 10, (3, 8, 8), width=4, depth=1, norm="batch")
    load_tensors_(b, tensors)
    for name, t in state_to_tensors(b).items():
        assert torch.equal(t, tensors[name]), name


def test_load_tensors_refuses_bad_weights_and_leaves_the_model_unchanged():
    """load_tensors_ checks the manifest before copying anything."""
    model = tiny_convnet()
    before = flatten_params(model)
    tensors = _broken("nan")
    tensors["classifier.bias"] = torch.full((3,), 5.0)
    with pytest.raises(ModelError, match="non-finite"):
        load_tensors_(model, tensors)
    assert torch.equal(flatten_params(model), before)
