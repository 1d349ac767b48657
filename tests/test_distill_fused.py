"""The fused CPU ConvNet functions against PyTorch's own layers and autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

from latentfl.distill import FunctionalStudent, _native, match_trajectory
from latentfl.distill._fused_convnet import (
    FusedConvNet,
    _Conv,
    _ConvBackward,
    _NormReluPool,
    _NormReluPoolBackward,
)
from latentfl.distill._native import cpu_kernels
from latentfl.models import build_model, flatten_params

F64 = torch.float64


@pytest.fixture(params=["compiled", "eager"])
def cpu_path(request, monkeypatch):
    """The norm block and the image layer's input gradient through their compiled C loops, and
    through the eager PyTorch kernels that replace them where there is no C compiler
    (``LATENTFL_NATIVE=0`` selects them)."""
    if request.param == "eager":
        monkeypatch.setenv("LATENTFL_NATIVE", "0")
    elif cpu_kernels() is None:
        pytest.skip("no C compiler here: the CPU kernels are not built")
    return request.param


def _block_ref(y, gamma, beta):
    return F.avg_pool2d(F.relu(F.group_norm(y, y.shape[1], gamma, beta)), 2)


def _block_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(2, 3, 4, 6, dtype=F64, generator=gen).requires_grad_(True)
    gamma = torch.randn(3, dtype=F64, generator=gen).requires_grad_(True)
    beta = torch.randn(3, dtype=F64, generator=gen).requires_grad_(True)
    return y, gamma, beta


def test_norm_relu_pool_gradients_pass_gradcheck(cpu_path):
    """The block's forward equals GroupNorm-ReLU-AvgPool; its backward and that backward's own
    backward (the double backward) match finite differences."""
    y, gamma, beta = _block_inputs()
    torch.testing.assert_close(_NormReluPool.apply(y, gamma, beta, 1e-5),
                               _block_ref(y, gamma, beta), rtol=1e-12, atol=1e-14)
    assert gradcheck(lambda *a: _NormReluPool.apply(*a, 1e-5), (y, gamma, beta))
    n, c, h, w = y.shape

    def first_backward(g_out, y, gamma):
        with torch.no_grad():  # the forward's saved tensors, as constants (the function's contract)
            yv = y.permute(0, 2, 3, 1).reshape(n, h * w, c)  # channels-last: (N, L, C)
            rstd = (yv.var(1, correction=0) + 1e-5).rsqrt()
            xhat = (yv - yv.mean(1, keepdim=True)) * rstd[:, None]
            act = None if cpu_path == "compiled" else (xhat * gamma + beta).clamp_min(0)
        return _NormReluPoolBackward.apply(g_out, y, gamma, beta.detach(), xhat, rstd,
                                           None if act is None else act.view(n, h, w, c))

    g_out = torch.randn(n, c, h // 2, w // 2, dtype=F64).requires_grad_(True)
    assert gradcheck(first_backward, (g_out, y, gamma))


@pytest.mark.parametrize("in_channels", [3, 5])  # through fold, through oneDNN
def test_conv_gradients_pass_gradcheck(in_channels, cpu_path):
    """The convolution and its backward (with and without the input gradient) match finite
    differences; the forward equals conv2d."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, in_channels, 5, 4, dtype=F64, generator=gen).requires_grad_(True)
    w = torch.randn(4, in_channels, 3, 3, dtype=F64, generator=gen).requires_grad_(True)
    b = torch.randn(4, dtype=F64, generator=gen).requires_grad_(True)
    g_out = torch.randn(2, 4, 5, 4, dtype=F64, generator=gen).requires_grad_(True)
    torch.testing.assert_close(_Conv.apply(x, w, b), F.conv2d(x, w, b, padding=1))
    assert gradcheck(_Conv.apply, (x, w, b))
    for with_input in (True, False):
        assert gradcheck(lambda *a, wi=with_input: _ConvBackward.apply(*a, wi), (g_out, x, w))


def _double_backward(block, inputs, seed=2):
    """Gradients of a function of the first-order gradients (what an unroll differentiates)."""
    gen = torch.Generator().manual_seed(seed)
    out = block(*inputs)
    g_out = torch.randn(out.shape, dtype=F64, generator=gen).requires_grad_(True)
    firsts = torch.autograd.grad((out * g_out).sum(), inputs, create_graph=True)
    probe = sum((f.sin() * torch.randn(f.shape, dtype=F64, generator=gen)).sum() for f in firsts)
    return torch.autograd.grad(probe, (*inputs, g_out), allow_unused=True)


def test_double_backward_equals_pytorch_layers(cpu_path):
    """Second-order gradients through the fused block and convolution equal PyTorch's."""
    inputs = _block_inputs(3)
    fused = _double_backward(lambda *a: _NormReluPool.apply(*a, 1e-5), inputs)
    ref = _double_backward(_block_ref, inputs)
    _assert_same_grads(fused, ref, inputs)  # beta's is zero: it acts through the ReLU mask
    gen = torch.Generator().manual_seed(4)
    conv_inputs = tuple(torch.randn(s, dtype=F64, generator=gen).requires_grad_(True)
                        for s in ((2, 3, 6, 6), (5, 3, 3, 3), (5,)))
    fused = _double_backward(_Conv.apply, conv_inputs)
    ref = _double_backward(lambda x, w, b: F.conv2d(x, w, b, padding=1), conv_inputs)
    _assert_same_grads(fused, ref, conv_inputs)  # the bias's is zero


def _assert_same_grads(fused, ref, inputs):
    """Equal gradients, an unused input's None counting as zeros."""
    for a, b, x in zip(fused, ref, (*inputs, None), strict=True):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
            assert x is not None  # only parameters that act through masks or cancel are unused
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _problem(dtype, width=8, size=8, m=12):
    torch.manual_seed(0)
    model = build_model("convnet", 4, (3, size, size), width=width, depth=2).to(dtype)
    start = flatten_params(model)
    target = start + 0.02 * torch.randn_like(start)
    images = torch.randn(m, 3, size, size, dtype=dtype)
    labels = torch.arange(m) % 4
    return model, start, target, images, labels, torch.tensor(0.05, dtype=dtype)


@pytest.mark.parametrize("unroll", ["full", "two_pass"])
@pytest.mark.parametrize("soft", [False, True])
def test_fused_unroll_equals_generic_in_float64(unroll, soft, cpu_path):
    """match_trajectory through the fused path (default ConvNet on a CPU) equals the generic
    functional_call path (the same model behind a wrapper) to rounding."""
    model, start, target, images, labels, alpha = _problem(F64)
    fused, generic = FunctionalStudent(model), FunctionalStudent(nn.Sequential(model))
    assert fused._fused is not None and generic._fused is None
    logits = torch.randn(12, 4, dtype=F64) if soft else None
    kw = dict(steps=3, batch_size=8, augment="one", seed=7, unroll=unroll, label_logits=logits)
    a = match_trajectory(fused, start, target, images, labels, alpha, **kw)
    b = match_trajectory(generic, start, target, images, labels, alpha, **kw)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a.image_grad, b.image_grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(a.alpha_grad, b.alpha_grad, rtol=1e-10, atol=1e-13)
    if soft:
        torch.testing.assert_close(a.label_grad, b.label_grad, rtol=1e-10, atol=1e-13)


def test_fused_unroll_equals_generic_in_float32(cpu_path):
    """In float32 the two paths agree to single-precision rounding on a soft-label unroll."""
    model, start, target, images, labels, alpha = _problem(torch.float32, width=16, size=16)
    logits = torch.randn(12, 4)
    kw = dict(steps=4, batch_size=8, augment="one", seed=3, label_logits=logits)
    a = match_trajectory(FunctionalStudent(model), start, target, images, labels, alpha, **kw)
    b = match_trajectory(FunctionalStudent(nn.Sequential(model)), start, target, images, labels,
                         alpha, **kw)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-7)
    for x, y in ((a.image_grad, b.image_grad), (a.label_grad, b.label_grad)):
        assert float((x - y).abs().max() / y.abs().max()) < 1e-4


def test_only_the_default_convnet_layout_is_fused():
    """Other layouts and models keep the generic path; odd sizes fall back at call time."""
    assert FusedConvNet.of(build_model("convnet", 4, (3, 8, 8), width=8, depth=2)) is not None
    for kw in (dict(pooling="max"), dict(pooling="none"), dict(norm="group", width=64),
               dict(norm="layer"), dict(norm="batch"), dict(norm="none")):
        kw = {"width": 8, **kw}
        assert FusedConvNet.of(build_model("convnet", 4, (3, 8, 8), **kw)) is None
    assert FusedConvNet.of(nn.Linear(3, 4)) is None
    fused = FusedConvNet.of(build_model("convnet", 4, (3, 6, 6), width=8, depth=2))
    assert fused.accepts(torch.zeros(1, 3, 8, 8)) and not fused.accepts(torch.zeros(1, 3, 6, 6))


def test_compiled_block_refuses_what_it_cannot_take():
    """The C loops take contiguous float32/float64 CPU tensors of one dtype, nothing else (the
    block then runs eagerly)."""
    native = cpu_kernels()
    if native is None:
        pytest.skip("no C compiler here: the CPU kernels are not built")
    x = torch.randn(2, 4, 3)
    assert native.accepts(x, torch.randn(3))
    assert not native.accepts(x, torch.randn(3, dtype=F64))
    assert not native.accepts(x.transpose(0, 1))
    assert not native.accepts(x.half())


def test_a_missing_compiler_leaves_the_eager_path(monkeypatch, tmp_path):
    """With no working C compiler the loops are not built, and the block still runs (eagerly)."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert _native._build() is None
    monkeypatch.setenv("LATENTFL_NATIVE", "0")
    y, gamma, beta = _block_inputs()
    torch.testing.assert_close(_NormReluPool.apply(y, gamma, beta, 1e-5),
                               _block_ref(y, gamma, beta), rtol=1e-12, atol=1e-14)
