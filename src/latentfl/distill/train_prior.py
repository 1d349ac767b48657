"""Train a generator prior on public data: the loop around :class:`~latentfl.distill.vae.VaeDesign`.

The design owns the generator and its encoder and makes one optimisation step per call. This
module draws the batches from one seeded ``torch.Generator``, shows progress, writes sample grids,
and saves the generator with :func:`~latentfl.distill.latent.save_generator`. The images are
normalised like the data (the dataset's mean and std are saved with the weights), so the prior
renders in the space the distillation works in. Public data only: the server must never train
its prior on participants' data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from latentfl.distill.generator import Generator
from latentfl.distill.latent import save_generator
from latentfl.distill.vae import VaeDesign
from latentfl.log import get_logger
from latentfl.seeding import derive_seed

__all__ = ["PriorResult", "save_grid", "train_prior"]


@dataclass(frozen=True)
class PriorResult:
    """Where the weights and sample grids went, the last losses and the wall time."""

    weights: Path
    samples: tuple[Path, ...]
    losses: dict[str, float]
    seconds: float


def save_grid(generator: Generator, z: Tensor, labels: Tensor, path: Path, nrow: int) -> Path:
    """Write ``generator(z, labels)`` as a PNG grid in [0, 1] pixel units (one class a column)."""
    from torchvision.utils import save_image  # torchvision is only needed to write PNGs

    with torch.no_grad():
        images = generator(z, labels) * generator.std + generator.mean
    save_image(images.clamp(0, 1).cpu(), str(path), nrow=nrow)
    return path


def train_prior(design: VaeDesign, x: Tensor, y: Tensor, *, out: Path, steps: int,
                batch_size: int = 64, seed: int = 0, sample_every: int = 1000,
                meta: dict | None = None, progress: bool = True) -> PriorResult:
    """Train ``design`` for ``steps`` batches of ``x (N, C, H, W)`` (normalised) with labels
    ``y``; save its generator to ``out`` (safetensors + JSON) and sample grids beside it."""
    from tqdm import tqdm  # progress bar only for this long-running command

    gen = design.generator()
    device = gen.const.device
    x, y = x.to(device), y.to(device)
    noise = torch.Generator(device=device).manual_seed(seed)
    rows = min(gen.config.num_classes, 10)
    grid_labels = torch.arange(rows, device=device).repeat(8)
    grid_z = gen.noise(grid_labels.shape[0], derive_seed(seed, "sample-grid"), device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = get_logger("latentfl.prior", design=design.name, steps=steps)
    samples: list[Path] = []
    losses: dict[str, float] = {}
    started = time.perf_counter()
    bar = tqdm(range(1, steps + 1), desc=f"prior ({design.name})", disable=not progress)
    for step in bar:
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=noise, device=device)
        losses = design.step(x[idx], y[idx], noise)
        if step % 50 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
        if step % sample_every == 0 or step == steps:
            path = out.parent / f"{out.stem}-samples-{step:06d}.png"
            samples.append(save_grid(design.generator(), grid_z, grid_labels, path, rows))
            log.info("prior_samples", step=step, path=str(path), **losses)
    seconds = time.perf_counter() - started
    if not all(math.isfinite(v) for v in losses.values()):
        log.warning("prior_loss_not_finite", **losses)
    save_generator(design.generator().cpu(), out, meta={
        **(meta or {}), "design": design.name, "steps": steps, "batch_size": batch_size,
        "seed": seed, "mean": design.generator().mean.flatten().tolist(),
        "std": design.generator().std.flatten().tolist()})
    return PriorResult(out, tuple(samples), losses, seconds)
