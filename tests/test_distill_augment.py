"""Differentiable augmentation: seeded replay and the batched ops against a per-sample loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latentfl.distill import FAMILIES, apply_augment, augment, draw_augment
from latentfl.distill.augment import CUTOUT_RATIO
from latentfl.errors import DistillError


def _images(n: int = 6, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)


def _reference_one(name: str, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """One sample ``x (C, H, W)`` transformed the straightforward way."""
    c, h, w = x.shape
    if name == "brightness":
        return x + p
    if name == "saturation":
        mean = x.mean(0, keepdim=True)
        return (x - mean) * p + mean
    if name == "contrast":
        return (x - x.mean()) * p + x.mean()
    if name == "crop":
        dy, dx = int(p[0]), int(p[1])
        s = max(abs(dy), abs(dx), 1)
        padded = F.pad(x, (s, s, s, s))
        return padded[:, s + dy:s + dy + h, s + dx:s + dx + w]
    if name == "cutout":
        size = int(h * CUTOUT_RATIO + 0.5)
        out = x.clone()
        top, left = int(p[0]), int(p[1])
        out[:, max(top, 0):max(top + size, 0), max(left, 0):max(left + size, 0)] = 0
        return out
    if name == "flip":
        return x.flip(-1) if bool(p) else x
    if name in ("scale", "rotate"):
        if name == "scale":
            theta = torch.tensor([[p[0], 0, 0], [0, p[1], 0]], dtype=x.dtype)
        else:
            a = float(p)
            theta = torch.tensor([[torch.cos(torch.tensor(a)), torch.sin(torch.tensor(a)), 0],
                                  [-torch.sin(torch.tensor(a)), torch.cos(torch.tensor(a)), 0]],
                                 dtype=x.dtype)
        grid = F.affine_grid(theta[None], [1, c, h, w], align_corners=False)
        return F.grid_sample(x[None], grid, padding_mode="zeros", align_corners=False)[0]
    raise AssertionError(name)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_ops_equal_a_per_sample_loop(family):
    """Each family's batched transform equals transforming the samples one by one."""
    x = _images()
    # draw until the seed picks this family under strategy "one"
    seed = next(s for s in range(1000)
                if {op.name for op in draw_augment(6, (16, 16), seed=s)}
                <= set({"color": ("brightness", "saturation", "contrast")}.get(family, (family,))))
    ops = draw_augment(6, (16, 16), seed=seed)
    batched = apply_augment(x, ops)
    expected = x
    for op in ops:
        expected = torch.stack([_reference_one(op.name, expected[i], op.params[i])
                                for i in range(x.shape[0])])
    torch.testing.assert_close(batched, expected, rtol=1e-9, atol=1e-9)


def test_replay_from_seed_is_identical():
    """The same seed gives bit-identical outputs; another seed gives different ones."""
    x = _images()
    for strategy in ("one", "all"):
        a = augment(x, 42, strategy=strategy)
        b = augment(x, 42, strategy=strategy)
        assert torch.equal(a, b)
    assert not torch.equal(augment(x, 1, strategy="all"), augment(x, 2, strategy="all"))


def test_parameters_are_per_sample():
    """Different samples of one call get different transform parameters."""
    ops = draw_augment(16, (16, 16), seed=3, strategy="all")
    for op in ops:
        assert op.params.shape[0] == 16
        assert len({tuple(torch.atleast_1d(p).tolist()) for p in op.params.float()}) > 1


def test_gradients_flow_to_images():
    """All families together are differentiable with respect to the images."""
    x = _images().requires_grad_(True)
    augment(x, 5, strategy="all").pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_unknown_strategy_is_refused():
    """An unknown strategy names itself and the valid ones."""
    with pytest.raises(DistillError, match="'one' or 'all'"):
        draw_augment(2, (8, 8), seed=0, strategy="some")
