"""Differentiable Siamese augmentation (DSA) with per-sample parameters replayable from a seed.

Families: ``color`` (brightness, saturation, contrast), ``crop`` (translation with zero padding),
``cutout``, ``flip``, ``scale``, ``rotate``. Strategy ``"one"`` applies one family per call (drawn
from the seed), ``"all"`` applies every family in that order. Parameters are drawn with a
``torch.Generator`` on the images' device, so drawing them needs no host sync, and the same seed
gives the same transform when the two-pass unroll recomputes a step. Everything is batched tensor
ops (``affine_grid``/``grid_sample`` for the geometric ones); there is no loop over samples.
Images are normalised (mean 0, unit std per channel); the transforms work in that space.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from latentfl.errors import DistillError

__all__ = ["FAMILIES", "AugmentOp", "apply_augment", "augment", "draw_augment"]

FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
_OPS: dict[str, tuple[str, ...]] = {
    "color": ("brightness", "saturation", "contrast"),
    "crop": ("crop",),
    "cutout": ("cutout",),
    "flip": ("flip",),
    "scale": ("scale",),
    "rotate": ("rotate",),
}
SCALE_RATIO = 1.2
ROTATE_DEGREES = 15.0
CROP_RATIO = 0.125
CUTOUT_RATIO = 0.5


@dataclass(frozen=True)
class AugmentOp:
    """One transform and its per-sample parameters (first dimension = sample)."""

    name: str
    params: Tensor


def draw_augment(
    n: int,
    image_hw: tuple[int, int],
    *,
    seed: int,
    device: torch.device | str = "cpu",
    strategy: Literal["one", "all"] = "one",
) -> tuple[AugmentOp, ...]:
    """Draw the transforms and per-sample parameters for ``n`` images from ``seed``."""
    if strategy == "one":
        families = (FAMILIES[random.Random(seed).randrange(len(FAMILIES))],)
    elif strategy == "all":
        families = FAMILIES
    else:
        raise DistillError(f"augmentation strategy {strategy!r} is unknown; expected 'one' or 'all'.")
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    h, w = image_hw
    ops = []
    for family in families:
        for name in _OPS[family]:
            ops.append(AugmentOp(name, _draw(name, n, h, w, gen, torch.device(device))))
    return tuple(ops)


def _draw(name: str, n: int, h: int, w: int, gen: torch.Generator, device: torch.device) -> Tensor:
    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=gen, device=device)

    if name == "brightness":
        return rand(n) - 0.5
    if name == "saturation":
        return rand(n) * 2.0
    if name == "contrast":
        return rand(n) + 0.5
    if name == "crop":  # integer shifts (dy, dx) in [-s, s]
        s = int(h * CROP_RATIO + 0.5)
        return torch.randint(-s, s + 1, (n, 2), generator=gen, device=device)
    if name == "cutout":  # top-left corner (y, x) of the erased square
        size = int(h * CUTOUT_RATIO + 0.5)
        return torch.stack(
            [torch.randint(-size // 2, h - size // 2, (n,), generator=gen, device=device),
             torch.randint(-size // 2, w - size // 2, (n,), generator=gen, device=device)], 1)
    if name == "flip":
        return rand(n) < 0.5
    if name == "scale":
        return rand(n, 2) * (SCALE_RATIO - 1.0 / SCALE_RATIO) + 1.0 / SCALE_RATIO
    if name == "rotate":
        return (rand(n) - 0.5) * 2.0 * ROTATE_DEGREES / 180.0 * math.pi
    raise DistillError(f"augmentation op {name!r} is unknown.")


def apply_augment(x: Tensor, ops: tuple[AugmentOp, ...]) -> Tensor:
    """Apply ``ops`` to the batch ``x (N, C, H, W)``; differentiable in ``x``."""
    for op in ops:
        x = _apply(op.name, x, op.params)
    return x


def _affine(x: Tensor, theta: Tensor, mode: str = "bilinear") -> Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _apply(name: str, x: Tensor, p: Tensor) -> Tensor:
    n, _, h, w = x.shape
    if name == "brightness":
        return x + p.view(n, 1, 1, 1).to(x.dtype)
    if name == "saturation":
        mean = x.mean(dim=1, keepdim=True)
        return (x - mean) * p.view(n, 1, 1, 1).to(x.dtype) + mean
    if name == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * p.view(n, 1, 1, 1).to(x.dtype) + mean
    if name == "crop":
        # output pixel (i, j) reads input pixel (i + dy, j + dx); nearest sampling at exact
        # pixel centres makes this an exact integer shift with zero padding
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0] = 1.0
        theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = p[:, 1].float() * 2.0 / w
        theta[:, 1, 2] = p[:, 0].float() * 2.0 / h
        return _affine(x, theta, mode="nearest")
    if name == "cutout":
        size = int(h * CUTOUT_RATIO + 0.5)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        top, left = p[:, 0].view(n, 1, 1), p[:, 1].view(n, 1, 1)
        inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
        return x * (~inside).unsqueeze(1).to(x.dtype)
    if name == "flip":
        return torch.where(p.view(n, 1, 1, 1), x.flip(3), x)
    if name == "scale":
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0] = p[:, 0]
        theta[:, 1, 1] = p[:, 1]
        return _affine(x, theta)
    if name == "rotate":
        cos, sin = torch.cos(p), torch.sin(p)
        theta = torch.stack([cos, sin, torch.zeros_like(p), -sin, cos, torch.zeros_like(p)], 1)
        return _affine(x, theta.view(n, 2, 3))
    raise DistillError(f"augmentation op {name!r} is unknown.")


def augment(
    x: Tensor, seed: int, *, strategy: Literal["one", "all"] = "one"
) -> Tensor:
    """Augment ``x (N, C, H, W)`` with transforms drawn from ``seed`` (same seed, same transform)."""
    ops = draw_augment(x.shape[0], (x.shape[2], x.shape[3]), seed=seed, device=x.device,
                       strategy=strategy)
    return apply_augment(x, ops)
