"""The ConvNet student on a CPU as fused autograd functions with a hand-derived double backward.

Trajectory matching differentiates through every inner step's gradient, so each layer's backward
is itself differentiated. PyTorch's generic double backward spends most of a CPU iteration on two
layers (issue 27, ConvNet-3 width 32, batch 100):

* GroupNorm's double backward is a composite of ~25 elementwise kernels per layer; here the
  instance norm, ReLU and 2x2 average pooling of one block are one function whose backward is
  another function, and that function's backward (derived below) takes nine passes over memory.
* the convolution's double backward computes the weight term as a convolution of the
  batch-transposed tensors (batch 100 as channels, a 32x32 "kernel"), which oneDNN runs slowly;
  here every term is a plain convolution or a ``convolution_backward`` call (oneDNN's
  weight-gradient kernel).
* activations are channels-last, oneDNN's native layout on a CPU: the 3 -> C image convolution
  takes half the time it takes on NCHW tensors, and a block's per-instance sums run over the
  positions axis of ``(N, H*W, C)`` with C contiguous, which vectorises.
* in the outer pass no gradient is computed for what it does not reach: the image layer's input
  during inner steps, and the first step's weights (the start is a constant).
* where a C compiler is at hand, the block's three functions and the image layer's input
  gradient run as compiled loops (:mod:`latentfl.distill._native`, ``_cpu_kernels.c``): two or
  three passes over memory instead of up to 25 eager kernels, and no stored activation (the
  ReLU's mask is recomputed from ``xhat``). The eager code here is the same math, and the
  fallback.

The math is the same as the modules' (biased variance, ``eps`` inside the square root), so the
results agree with the generic path to rounding (tests/test_distill_fused.py, float64). These are
used only on a CPU, one participant at a time (:mod:`latentfl.distill.functional`); the GPU path
keeps PyTorch's own kernels.

Block math, per instance (sample n, channel c), ``L = H*W`` positions, ``r = (var + eps)^-1/2``,
``xhat = (y - mean) r``, ``k = r gamma``. Forward: ``out = avgpool(relu(gamma xhat + beta))``.
First backward, from ``gout``: ``u = mask * upsample(gout) / 4`` (mask = the ReLU was active),
``a = mean(u)``, ``b = mean(u xhat)``; ``gy = k (u - a - xhat b)``, ``ggamma = sum u xhat``,
``gbeta = sum u``. Its backward, from cotangents ``(Gy, Gg, Gb)``: with ``mGy = mean(Gy)``,
``mGyx = mean(Gy xhat)``:

* ``dS/du = k Gy + (Gg - k mGyx) xhat + (Gb - k mGy)``, and ``d gout = avgpool(mask dS/du)``;
* ``d gamma = sum_n r (sum Gy u - L a mGy - L b mGyx)``;
* through ``xhat`` at fixed ``r``: ``gx = (Gg - k mGyx) u - k b Gy``; through ``r``:
  ``R = gamma (sum Gy u - L a mGy - L b mGyx) + sum(gx xhat) / r``; and since
  ``d r / d y = -r^2 xhat / L``: ``d y = r (gx - mean gx) - R r^2 xhat / L``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.autograd.graph import get_gradient_edge

from latentfl.distill._native import cpu_kernels
from latentfl.models import param_shapes, unflatten_params

__all__ = ["FusedConvNet"]

_conv_backward = torch.ops.aten.convolution_backward.default
_ONE, _PAD = [1, 1], [1, 1]  # 3x3 convolution: stride 1, padding 1, dilation 1
_FOLD_MAX_CHANNELS = 4  # input gradients of layers this narrow go through fold (_input_grad)


def _conv_grads(g_out: Tensor, x: Tensor, w: Tensor, mask: list[bool]) -> tuple:
    """oneDNN's gradients of ``conv2d(x, w, padding=1)`` wrt input, weight and bias."""
    return _conv_backward(g_out, x, w, [w.shape[0]], _ONE, _PAD, _ONE, False, [0, 0], 1, mask)


def _input_grad(g_out: Tensor, w: Tensor, like: Tensor) -> Tensor:
    """The gradient of ``conv2d(x, w, padding=1)`` wrt ``x`` (shaped like ``like``).

    With few input channels (the image layer), oneDNN's transposed convolution is slow (37 ms
    for 128 -> 3 channels, batch 100, 32x32 on one core, channels-last); a matrix product into
    the patch matrix and ``fold`` (col2im) give the same sums in 19 ms, and the compiled loop
    (:mod:`latentfl.distill._native`) in one pass over ``g_out``."""
    n, c, h, w_px = like.shape
    if c > _FOLD_MAX_CHANNELS:
        return _conv_backward(g_out, like, w, None, _ONE, _PAD, _ONE, False, [0, 0], 1,
                              [True, False, False])[0]
    g_nhwc = _nhwc(g_out)
    native = cpu_kernels()
    if native is not None and native.takes_image_grad(g_nhwc, w):
        return _nchw(native.image_input_grad(g_nhwc, w))
    # (N, C_out, H*W) as a strided view of the channels-last gradient: BLAS reads it transposed
    g_cols = g_nhwc.reshape(n, h * w_px, w.shape[0]).transpose(1, 2)
    cols = torch.matmul(w.reshape(w.shape[0], -1).t(), g_cols)  # (N, C*9, H*W)
    return F.fold(cols, (h, w_px), 3, padding=1)


def _engine_needs(x: Tensor) -> bool:
    """Whether the running backward pass needs a gradient wrt ``x`` (not the case for the first
    layer's input while an inner step takes its gradient wrt the weights alone)."""
    if not x.requires_grad:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(get_gradient_edge(x).node))
    except RuntimeError:  # not inside an engine-run backward: compute it
        return True
    except AttributeError:  # a torch without this private query: compute it, as before
        return True


def _nhwc(t: Tensor) -> Tensor:
    """An ``(N, C, H, W)`` tensor as ``(N, H, W, C)``: a view for a channels-last one."""
    return t.permute(0, 2, 3, 1).contiguous()


def _nchw(t: Tensor) -> Tensor:
    """The inverse of :func:`_nhwc`: ``(N, H, W, C)`` as a channels-last ``(N, C, H, W)`` view."""
    return t.permute(0, 3, 1, 2)


def _pool(x: Tensor) -> Tensor:
    """``avg_pool2d`` with a 2x2 window of an ``(N, H, W, C)`` tensor with even H and W, as two
    strided adds (contiguous runs of C values; ~6x faster on a CPU than the pooling kernel)."""
    rows = x[:, 0::2] + x[:, 1::2]
    return (rows[:, :, 0::2] + rows[:, :, 1::2]).mul_(0.25)


def _relu_grad(g: Tensor, act: Tensor) -> Tensor:
    """``g`` where the ReLU's output ``act`` is positive, else 0."""
    return torch.ops.aten.threshold_backward(g, act, 0.0)


def _relu_grad_unpool(g: Tensor, act: Tensor) -> Tensor:
    """``_relu_grad(g'', act)`` for ``g''`` the adjoint of :func:`_pool` of ``g`` (each entry over
    its 2x2 window, divided by 4), all ``(N, H, W, C)``; the row repeat is a broadcast."""
    n, h, w, c = act.shape
    cols = (g * 0.25).repeat_interleave(2, dim=2)  # (N, H/2, W, C)
    rows = cols.unsqueeze(2).expand(n, h // 2, 2, w, c)
    return _relu_grad(rows, act.view(n, h // 2, 2, w, c)).view(n, h, w, c)


class _Conv(Function):
    """``conv2d(x, w, b, padding=1)`` whose backward is :class:`_ConvBackward`."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, b, padding=1)

    @staticmethod
    def backward(ctx, g_out: Tensor):
        x, w = ctx.saved_tensors
        with_input = ctx.needs_input_grad[0] and _engine_needs(x)
        if not torch.is_grad_enabled() and not _engine_needs(w):
            # the outer pass at the first step: the start weights are a constant
            return (_input_grad(g_out, w, x) if with_input else None), None, None
        if with_input:
            return _ConvBackward.apply(g_out, x, w, True)
        return (None, *_ConvBackward.apply(g_out, x, w, False))


class _ConvBackward(Function):
    """``(g_out, x, w) -> ([gx,] gw, gb)``; its backward is three plain convolution calls."""

    @staticmethod
    def forward(ctx, g_out: Tensor, x: Tensor, w: Tensor, with_input: bool):
        gw = _conv_grads(g_out, x, w, [False, True, False])[1]
        gb = g_out.sum((0, 2, 3))  # a vectorised channels-last reduction; oneDNN's is scalar
        gx = _input_grad(g_out, w, x) if with_input else None
        ctx.save_for_backward(g_out, x, w)
        ctx.with_input = with_input
        return (gx, gw, gb) if with_input else (gw, gb)

    @staticmethod
    def backward(ctx, *cot: Tensor):
        g_out, x, w = ctx.saved_tensors
        c_gx, c_gw, c_gb = cot if ctx.with_input else (None, *cot)
        need_gout, need_x, need_w = ctx.needs_input_grad[:3]
        d_gout = d_x = d_w = None
        if need_gout:  # gx, gw, gb are linear in g_out: their adjoints are forward convolutions
            d_gout = F.conv2d(x, c_gw, c_gb, padding=1)
            if c_gx is not None:
                d_gout = d_gout + F.conv2d(c_gx, w, padding=1)
        # <c_gw, gw(x)> wrt x: a transposed conv; <c_gx, gx(w)> wrt w: a weight gradient
        if need_x:
            d_x = _input_grad(g_out, c_gw, x)
        if need_w and c_gx is not None and _engine_needs(w):
            d_w = _conv_grads(g_out, c_gx, w, [False, True, False])[1]
        return d_gout, d_x, d_w, None


def _dot_positions(a: Tensor, b: Tensor) -> Tensor:
    """``sum_l a[n, l, c] b[n, l, c]`` per instance ``(N, C)``."""
    return torch.linalg.vecdot(a, b, dim=1)


def _relu_output(xhat: Tensor, gamma: Tensor, beta: Tensor, shape) -> Tensor:
    """``relu(gamma xhat + beta)`` as ``(N, H, W, C)`` (the eager path keeps it for its mask)."""
    return torch.addcmul(beta, xhat, gamma).clamp_min_(0).view(shape)


class _NormReluPool(Function):
    """``avg_pool2d(relu(group_norm(y, C groups, gamma, beta, eps)), 2)`` (instance norm), computed
    channels-last: per-instance statistics are sums over the positions axis of ``(N, L, C)``.
    The compiled loops keep no activation (their backward recomputes the ReLU's mask from
    ``xhat``); the eager path keeps it as ``act``."""

    @staticmethod
    def forward(ctx, y: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
        n, c, h, w = y.shape
        length = h * w
        yv = _nhwc(y).view(n, length, c)
        native = cpu_kernels()
        if native is not None and native.accepts(yv, gamma, beta):
            xhat, rstd, out = native.block_forward(yv, gamma, beta, eps, (n, h, w, c))
            act = None
        else:
            xhat = yv - (yv.sum(1) / length)[:, None]  # centred first: the two-pass variance
            rstd = (_dot_positions(xhat, xhat) / length + eps).rsqrt()
            xhat.mul_(rstd[:, None])  # (N, L, C)
            act = _relu_output(xhat, gamma, beta, (n, h, w, c))
            out = _pool(act)
        ctx.save_for_backward(y, gamma, beta, xhat, rstd, act)
        return _nchw(out)

    @staticmethod
    def backward(ctx, g_out: Tensor):
        y, gamma, beta, xhat, rstd, act = ctx.saved_tensors
        gy, g_gamma, g_beta = _NormReluPoolBackward.apply(g_out, y, gamma, beta, xhat, rstd, act)
        return gy, g_gamma, g_beta, None


class _NormReluPoolBackward(Function):
    """``(g_out, y, gamma) -> (gy, g_gamma, g_beta)`` of :class:`_NormReluPool`; ``beta``,
    ``xhat (N, L, C)``, ``rstd (N, C)`` and the activation ``act (N, H, W, C)`` (its positive
    entries: the ReLU's mask; None from the compiled forward) are the forward's, passed along as
    constants: their dependence on ``y`` is in the closed-form backward (the module docstring's
    math), which is therefore not differentiable again (a third order raises instead of silently
    dropping those terms)."""

    @staticmethod
    def forward(ctx, g_out, y, gamma, beta, xhat, rstd, act):
        n, c, h, w = y.shape
        length = h * w
        g_out = _nhwc(g_out)
        native = cpu_kernels()
        if act is None and native is not None and native.accepts(g_out, xhat, gamma, beta, rstd):
            u, s_u, s_ux, gy = native.block_backward(g_out, xhat, gamma, beta, rstd)
        else:
            if act is None:  # the compiled forward ran, and the loops are switched off since
                act = _relu_output(xhat, gamma, beta, (n, h, w, c))
            u = _relu_grad_unpool(g_out, act).view(n, length, c)  # mask * upsample(g_out) / 4
            s_u = u.sum(1)
            s_ux = _dot_positions(u, xhat)
            k = rstd * gamma
            gy = torch.addcmul((-k * s_u / length)[:, None], u, k[:, None])
            gy.addcmul_(xhat, (-k * s_ux / length)[:, None])
        ctx.save_for_backward(gamma, beta, xhat, rstd, act, u, s_u, s_ux)
        ctx.shape = (n, h, w, c)
        return _nchw(gy.view(n, h, w, c)), s_ux.sum(0), s_u.sum(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, c_gy, c_gg, c_gb):
        gamma, beta, xhat, rstd, act, u, s_u, s_ux = ctx.saved_tensors
        n, h, w, c = ctx.shape
        length = h * w
        need_gout, need_y, need_gamma = ctx.needs_input_grad[:3]
        c_gy = _nhwc(c_gy).view(n, length, c)
        native = cpu_kernels()
        if act is None and native is not None and native.accepts(
                c_gy, c_gg, c_gb, gamma, beta, xhat, rstd, u, s_u, s_ux):
            d_gout, d_y, d_gamma = native.block_double_backward(
                c_gy, c_gg, c_gb, gamma, beta, xhat, rstd, u, s_u, s_ux, ctx.shape)
            return (_nchw(d_gout) if need_gout else None,
                    _nchw(d_y.view(n, h, w, c)) if need_y else None,
                    d_gamma if need_gamma else None, None, None, None, None)
        if act is None:
            act = _relu_output(xhat, gamma, beta, (n, h, w, c))
        k = rstd * gamma
        a, b = s_u / length, s_ux / length
        m_gy = c_gy.sum(1) / length
        m_gyx = _dot_positions(c_gy, xhat) / length
        d_gout = d_y = d_gamma = None
        if need_gout:
            d_u = torch.addcmul((c_gb - k * m_gy)[:, None], c_gy, k[:, None])
            d_u.addcmul_(xhat, (c_gg - k * m_gyx)[:, None])
            d_gout = _nchw(_pool(_relu_grad(d_u.view(n, h, w, c), act)))
        if need_y or need_gamma:
            # sum over positions of c_gy * (u - a - xhat b), per instance
            proj = _dot_positions(c_gy, u) - length * (a * m_gy + b * m_gyx)
            if need_gamma:
                d_gamma = (rstd * proj).sum(0)
            if need_y:
                coef_u = c_gg - k * m_gyx  # gx = coef_u u - k b c_gy
                mean_gx = coef_u * a - k * b * m_gy
                big_r = gamma * proj + (coef_u * s_ux - k * b * length * m_gyx) / rstd
                d_y = torch.addcmul((-rstd * mean_gx)[:, None], u, (rstd * coef_u)[:, None])
                d_y.addcmul_(c_gy, (-rstd * k * b)[:, None])
                d_y.addcmul_(xhat, (-big_r * rstd * rstd / length)[:, None])
                d_y = _nchw(d_y.view(n, h, w, c))
        return d_gout, d_y, d_gamma, None, None, None, None


class FusedConvNet:
    """The forward of a default-layout ConvNet (instance norm, ReLU, 2x2 average pooling) through
    the fused functions, or None from :meth:`of` for any other model."""

    def __init__(self, model: nn.Module, eps: list[float]) -> None:
        self.shapes = param_shapes(model)
        self.eps = eps

    @classmethod
    def of(cls, model: nn.Module) -> FusedConvNet | None:
        from latentfl.models.convnet import ConvNet

        if type(model) is not ConvNet:
            return None
        layers = list(model.features)
        if len(layers) % 4:
            return None
        eps = []
        for conv, norm, act, pool in zip(*[iter(layers)] * 4, strict=True):
            if not (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3)
                    and conv.stride == (1, 1) and conv.padding == (1, 1)
                    and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is not None
                    and conv.padding_mode == "zeros"
                    and type(norm) is nn.GroupNorm and norm.num_groups == norm.num_channels
                    and norm.affine and type(act) is nn.ReLU
                    and type(pool) is nn.AvgPool2d and pool.kernel_size == 2
                    and pool.stride == 2 and pool.padding == 0 and not pool.ceil_mode):
                return None
            eps.append(float(norm.eps))
        if list(dict(model.named_buffers())):
            return None
        return cls(model, eps)

    def accepts(self, x: Tensor) -> bool:
        """Whether every block sees an even-sized input (the pooling then drops nothing)."""
        h, w = x.shape[-2:]
        for _ in self.eps:
            if h % 2 or w % 2:
                return False
            h, w = h // 2, w // 2
        return True

    def __call__(self, theta: Tensor, x: Tensor) -> Tensor:
        """Logits ``(B, K)`` for ``theta (D,)`` and ``x (B, C, H, W)``."""
        p = list(unflatten_params(theta, self.shapes).values())
        x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout on a CPU
        for i, eps in enumerate(self.eps):
            w, b, gamma, beta = p[4 * i: 4 * i + 4]
            x = _NormReluPool.apply(_Conv.apply(x, w, b), gamma, beta, eps)
        return F.linear(x.flatten(1), p[-2], p[-1])
