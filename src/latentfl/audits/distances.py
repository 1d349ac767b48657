"""Image-to-image distances used by the synthetic-data audit.

Three views of "how close is this synthetic image to that private one":
pixel RMS (0 = identical, in [0, 1] intensity units), SSIM (1 = identical structure; we use
``1 - SSIM`` as a distance) and cosine distance between the penultimate features of a fixed
encoder. Images enter as uint8 NHWC arrays, the layout of ``latentfl.data.ImageSet``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from latentfl.models import build_model


def to_unit_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images of shape (N, H, W, C), got {images.dtype} "
                         f"{images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


@dataclass(frozen=True)
class Neighbours:
    """The k nearest reference items of each query, nearest first: ``distances`` and ``indices``
    have shape (num_queries, k)."""

    distances: np.ndarray
    indices: np.ndarray


def pixel_neighbours(query: torch.Tensor, reference: torch.Tensor, k: int) -> Neighbours:
    """k nearest references under RMS pixel distance sqrt(mean((q - r)^2)).

    A float32 matrix product shortlists candidates (fast); the shortlist is then re-measured
    exactly in float64 so exact copies come out at distance 0.
    """
    k = min(k, reference.shape[0])
    q = query.reshape(query.shape[0], -1)
    r = reference.reshape(reference.shape[0], -1)
    r_sq = (r * r).sum(1)
    shortlist = min(reference.shape[0], k + 16)
    # bound the (chunk, shortlist, dim) float64 block of the exact re-measure to ~32 MB
    chunk = max(1, min(1024, 4_000_000 // (shortlist * q.shape[1])))
    out_d = np.empty((q.shape[0], k))
    out_i = np.empty((q.shape[0], k), dtype=np.int64)
    r64 = r.double()
    for start in range(0, q.shape[0], chunk):
        qc = q[start:start + chunk]
        sq = (qc * qc).sum(1, keepdim=True) + r_sq[None, :] - 2.0 * qc @ r.T
        cand = torch.topk(sq, shortlist, dim=1, largest=False).indices
        exact = ((qc.double()[:, None, :] - r64[cand]) ** 2).mean(-1).sqrt()
        order = torch.argsort(exact, dim=1, stable=True)[:, :k]
        out_d[start:start + chunk] = torch.gather(exact, 1, order).numpy()
        out_i[start:start + chunk] = torch.gather(cand, 1, order).numpy()
    return Neighbours(out_d, out_i)


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd length ``size``."""
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5,
         chunk: int = 2048) -> torch.Tensor:
    """Mean SSIM of each pair (x[i], y[i]); images float in [0, 1], shape (N, C, H, W).

    Wang et al. (2004) with a separable Gaussian window (shrunk to fit small images), no
    padding, constants C1 = 0.01^2 and C2 = 0.03^2, averaged over channels and positions.
    """
    if x.shape != y.shape:
        raise ValueError(f"SSIM needs pairs of equal shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    size = min(window, x.shape[2], x.shape[3])
    size -= 1 - size % 2
    g = gaussian_window(size, sigma)
    channels = x.shape[1]
    gh = g.view(1, 1, 1, size).repeat(channels, 1, 1, 1)
    gv = g.view(1, 1, size, 1).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, gh, groups=channels), gv, groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    out = []
    for start in range(0, x.shape[0], chunk):
        a, b = x[start:start + chunk].float(), y[start:start + chunk].float()
        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a**2
        var_b = blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
            (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        out.append(s.mean(dim=(1, 2, 3)))
    return torch.cat(out)


def ssim_neighbours(query: torch.Tensor, reference: torch.Tensor,
                    candidates: np.ndarray) -> Neighbours:
    """Most SSIM-similar reference among each query's pixel-nearest ``candidates`` (N, K).

    Exact SSIM against every reference costs N*M window passes; the pixel shortlist keeps it at
    N*K. Distances are ``1 - SSIM`` so that, like the others, smaller means closer.
    """
    n, kc = candidates.shape
    idx = torch.from_numpy(candidates.reshape(-1))
    q = query.repeat_interleave(kc, dim=0)
    s = ssim(q, reference[idx]).view(n, kc)
    best = torch.argmax(s, dim=1)
    dist = (1.0 - s.gather(1, best[:, None])).double().numpy()
    ind = np.take_along_axis(candidates, best.numpy()[:, None], axis=1)
    return Neighbours(dist, ind)


def _last_linear(model: nn.Module) -> nn.Linear:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError(f"model {type(model).__name__} has no nn.Linear head to take "
                         "penultimate features from")
    return last


class FeatureEncoder:
    """Penultimate features of a fixed classifier: the input of its last ``nn.Linear``.

    ``mean``/``std`` normalise [0, 1] images the way the model was trained.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 description: str) -> None:
        self.model = model.eval()
        self.head = _last_linear(model)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.description = description

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """(N, F) float32 features of unit-float images (N, C, H, W)."""
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_hook(
            lambda _m, inputs, _out: captured.append(inputs[0].detach().flatten(1)))
        try:
            for start in range(0, images.shape[0], batch_size):
                batch = (images[start:start + batch_size] - self.mean) / self.std
                self.model(batch)
        finally:
            hook.remove()
        return torch.cat(captured).float()


def cosine_neighbours(query: torch.Tensor, reference: torch.Tensor, k: int = 1) -> Neighbours:
    """k nearest references by cosine distance ``1 - cos`` between feature vectors."""
    k = min(k, reference.shape[0])
    qn = F.normalize(query.double(), dim=1)
    rn = F.normalize(reference.double(), dim=1)
    dist = (1.0 - qn @ rn.T).clamp_min(0.0)
    d, i = torch.topk(dist, k, dim=1, largest=False)
    return Neighbours(d.numpy(), i.numpy())




def random_encoder(in_shape: tuple[int, int, int], mean: tuple[float, ...],
                   std: tuple[float, ...], *, seed: int = 0,
                   num_classes: int = 10) -> FeatureEncoder:
    """A seeded, randomly initialised ConvNet: a fixed encoder that never saw any data."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        depth = 3 if min(in_shape[1:]) >= 8 else 1
        model = build_model("convnet", num_classes, in_shape, width=32, depth=depth)
    finally:
        torch.random.set_rng_state(state)
    return FeatureEncoder(model, mean, std, f"randomly initialised ConvNet (seed {seed})")


__all__ = [
    "FeatureEncoder",
    "Neighbours",
    "cosine_neighbours",
    "gaussian_window",
    "pixel_neighbours",
    "ssim",
    "random_encoder",
    "ssim_neighbours",
    "to_unit_float",
]
