"""Train the built-in generator as a class-conditional GAN on public data.

Hinge loss, a small projection discriminator, Adam (lr 2e-4, betas (0, 0.99)), and the same
differentiable augmentation on real and fake images (it keeps the discriminator from memorising
a small public set). The generator learns in the data's normalised space, so its images are
normalised like the real data; the dataset's mean and std are saved with the weights.
This is for public data only: the server must never train the prior on participants' data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentfl.distill.augment import augment
from latentfl.distill.generator import Generator, GeneratorConfig
from latentfl.distill.latent import save_generator
from latentfl.log import get_logger
from latentfl.seeding import derive_seed

__all__ = ["Discriminator", "GanResult", "train_generator"]


class Discriminator(nn.Module):
    """Strided conv blocks, global sum pooling, and a class-projection head."""

    def __init__(self, num_classes: int, channels: int, image_size: int, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = channels, image_size
        while size > 4:
            layers += [nn.Conv2d(cin, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin, size, width = width, (size + 1) // 2, min(width * 2, 256)
        layers += [nn.Conv2d(cin, cin, 3, padding=1), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 1)
        self.embed = nn.Embedding(num_classes, cin)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        h = self.features(x).sum((2, 3))  # (B, C)
        return self.head(h).squeeze(1) + (self.embed(labels) * h).sum(1)


@dataclass(frozen=True)
class GanResult:
    """Where the weights and sample grids went, and the last losses."""

    weights: Path
    samples: tuple[Path, ...]
    d_loss: float
    g_loss: float


def _save_grid(generator: Generator, z: Tensor, labels: Tensor, path: Path, nrow: int) -> Path:
    from torchvision.utils import save_image

    with torch.no_grad():
        images = generator(z, labels) * generator.std + generator.mean
    save_image(images.clamp(0, 1).cpu(), str(path), nrow=nrow)
    return path


def train_generator(
    x: Tensor, y: Tensor, *, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
    out: Path, steps: int, batch_size: int = 64, lr: float = 2e-4, seed: int = 0,
    device: torch.device | str = "cpu", config: GeneratorConfig | None = None,
    sample_every: int = 1000, meta: dict | None = None, progress: bool = True,
) -> GanResult:
    """Train a generator on normalised images ``x (N, C, H, W)`` with labels ``y``; save it to
    ``out`` (safetensors + JSON) and sample grids to ``out``'s folder as PNG."""
    from tqdm import tqdm

    device = torch.device(device)
    c, h, _ = x.shape[1:]
    config = config or GeneratorConfig(num_classes=num_classes, image_size=h, channels=c)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = Generator(config, mean=mean, std=std).to(device)
        disc = Discriminator(num_classes, c, h).to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.0, 0.99))
    x, y = x.to(device), y.to(device)
    data_gen = torch.Generator(device=device).manual_seed(seed)
    rows = min(num_classes, 10)
    grid_labels = torch.arange(rows, device=device).repeat(8)
    grid_z = gen.noise(grid_labels.shape[0], derive_seed(seed, "grid"), device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples: list[Path] = []
    log = get_logger("latentfl.gan", steps=steps)
    d_loss = g_loss = torch.zeros((), device=device)
    for step in tqdm(range(1, steps + 1), desc="generator", disable=not progress):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=data_gen, device=device)
        real, labels = x[idx], y[idx]
        z = torch.randn(batch_size, config.z_dim, generator=data_gen, device=device)
        fake = gen(z, labels)
        # discriminator: hinge loss on augmented real and fake images
        seed_real, seed_fake = derive_seed(seed, "real", step), derive_seed(seed, "fake", step)
        d_real = disc(augment(real, seed_real), labels)
        d_fake = disc(augment(fake.detach(), seed_fake), labels)
        d_loss = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # generator: non-saturating hinge objective
        g_loss = -disc(augment(fake, seed_fake), labels).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        if step % sample_every == 0 or step == steps:
            path = out.parent / f"{out.stem}-samples-{step:06d}.png"
            samples.append(_save_grid(gen, grid_z, grid_labels, path, rows))
            log.info("generator_samples", step=step, d_loss=d_loss.item(), g_loss=g_loss.item(),
                     path=str(path))
    save_generator(gen.cpu(), out, meta={**(meta or {}), "steps": steps, "seed": seed,
                                         "mean": list(mean), "std": list(std)})
    d, g = d_loss.item(), g_loss.item()
    if not (math.isfinite(d) and math.isfinite(g)):
        log.warning("generator_loss_not_finite", d_loss=d, g_loss=g)
    return GanResult(out, tuple(samples), d, g)
