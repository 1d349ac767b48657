"""The synthetic-data audit catches copies of private images and does not cry wolf on clean sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from latentfl.audits.distances import gaussian_window, pixel_neighbours, random_encoder, ssim
from latentfl.audits.synthetic import audit_synthetic
from latentfl.data import load_dataset

LEAK_METRICS = {"pixel_nn", "extraction_ratio", "nn_share", "proximity_mia"}


@pytest.fixture(scope="module")
def pools() -> dict[str, np.ndarray]:
    """cifar10-mini reduced to 16x16: T = 200 training, H = 400 holdout, 200 clean others."""
    ds = load_dataset("builtin:cifar10-mini")
    pick = np.random.default_rng(0).choice(len(ds.train), 800, replace=False)
    x = ds.train.x[pick].astype(np.float32)
    small = x.reshape(800, 16, 2, 16, 2, 3).mean(axis=(2, 4)).round().astype(np.uint8)
    return {"train": small[:200], "holdout": small[200:600], "other": small[600:],
            "other_labels": ds.train.y[pick[600:]]}


@pytest.fixture(scope="module")
def encoder():
    return random_encoder((3, 16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), seed=0)


def _leaky(train: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(5)
    exact = train[[3, 17, 42, 99, 150]]
    noised = np.clip(exact.astype(np.int16) + rng.normal(0, 4, exact.shape).round(), 0, 255)
    return np.concatenate([exact, noised.astype(np.uint8)])


def test_copies_of_five_private_images_are_flagged(pools, encoder) -> None:
    """Exact and lightly noised copies of 5 training images flag pixel, ratio, share, proximity."""
    audit = audit_synthetic(_leaky(pools["train"]), pools["train"], pools["holdout"],
                            encoder=encoder, seed=0)
    flagged = {v.metric for v in audit.verdicts if v.flagged}
    assert flagged >= LEAK_METRICS, [(v.metric, v.p_value) for v in audit.verdicts]
    assert audit.flagged


def test_copies_hidden_among_clean_images_are_still_flagged_on_pixels(pools, encoder) -> None:
    """Ten copies hidden among 40 clean images still flag the pixel and ratio checks."""
    images = np.concatenate([_leaky(pools["train"]), pools["other"][:40]])
    audit = audit_synthetic(images, pools["train"], pools["holdout"], encoder=encoder, seed=0)
    flagged = {v.metric for v in audit.verdicts if v.flagged}
    assert {"pixel_nn", "extraction_ratio"} <= flagged


def test_unseen_real_images_are_not_flagged(pools, encoder) -> None:
    """Real images that trained nothing (a clean stand-in for synthetic data) raise no flag."""
    audit = audit_synthetic(pools["other"][:60], pools["train"], pools["holdout"],
                            encoder=encoder, seed=0)
    assert not audit.flagged, [(v.metric, v.p_value) for v in audit.verdicts]


def test_class_means_are_not_flagged(pools, encoder) -> None:
    """Blurry per-class means of unrelated images, close to everything, are not called copies."""
    labels = pools["other_labels"]
    means = np.stack([pools["other"][labels == c].mean(axis=0) for c in range(10)])
    audit = audit_synthetic(means.round().astype(np.uint8), pools["train"], pools["holdout"],
                            encoder=encoder, seed=0)
    assert not audit.flagged, [(v.metric, v.p_value) for v in audit.verdicts]


def test_baseline_of_real_training_images_shows_the_worst_case(pools, encoder) -> None:
    """The naive baseline (real training images) hits every near-copy count."""
    audit = audit_synthetic(pools["other"][:20], pools["train"], pools["holdout"],
                            encoder=encoder, seed=0)
    pixel = next(v for v in audit.verdicts if v.metric == "pixel_nn")
    assert pixel.numbers["baseline_count"] == 20
    assert np.all(audit.baseline.pixel_t == 0.0)


def _ssim_reference(x: torch.Tensor, y: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """SSIM with a full 2-D window, one channel at a time: the slow oracle."""
    g = gaussian_window(size, sigma)
    w = (g[:, None] * g[None, :])[None, None]
    out = []
    for c in range(x.shape[1]):
        a, b = x[:, c:c + 1], y[:, c:c + 1]
        mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
        var_a = F.conv2d(a * a, w) - mu_a**2
        var_b = F.conv2d(b * b, w) - mu_b**2
        cov = F.conv2d(a * b, w) - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1)
                                                         * (var_a + var_b + c2))
        out.append(s.mean(dim=(1, 2, 3)))
    return torch.stack(out).mean(0)


def test_batched_ssim_matches_full_window_oracle() -> None:
    """Separable batched SSIM equals SSIM with a full 2-D Gaussian window; identical gives 1."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 20, 20, generator=gen)
    y = (x + 0.1 * torch.randn(6, 3, 20, 20, generator=gen)).clamp(0, 1)
    assert torch.allclose(ssim(x, y), _ssim_reference(x, y, 11, 1.5), atol=1e-5)
    assert torch.allclose(ssim(x, x), torch.ones(6), atol=1e-6)
    assert torch.all(ssim(x, y) < 1)


def test_pixel_neighbours_match_brute_force() -> None:
    """Shortlisted RMS neighbours equal a brute-force search; exact copies are at distance 0."""
    gen = torch.Generator().manual_seed(1)
    ref = torch.rand(300, 3, 8, 8, generator=gen)
    query = torch.cat([ref[:4], torch.rand(10, 3, 8, 8, generator=gen)])
    nb = pixel_neighbours(query, ref, 5)
    brute = ((query[:, None] - ref[None]) ** 2).flatten(2).mean(-1).sqrt().double()
    d, i = torch.topk(brute, 5, dim=1, largest=False)
    assert np.allclose(nb.distances, d.numpy(), atol=1e-6)
    assert np.array_equal(nb.indices[:, 0], i[:, 0].numpy())
    assert np.all(nb.distances[:4, 0] == 0.0)
