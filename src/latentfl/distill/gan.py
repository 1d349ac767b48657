"""The GAN prior design: the built-in generator trained adversarially, stabilised the usual ways.

Hinge loss; a projection discriminator with spectral norm on every layer; the same differentiable
augmentation (:func:`~latentfl.distill.augment.augment`) on real and fake batches, so the
discriminator cannot memorise a small public set; Adam (betas (0, 0.99)); and an exponential
moving average of the generator's weights (with a warm-up), which is sampled and saved.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from latentfl.distill.augment import augment
from latentfl.distill.generator import Generator

__all__ = ["Discriminator", "GanDesign"]


class Discriminator(nn.Module):
    """Spectrally normalised strided conv blocks, global sum pooling, a class-projection head."""

    def __init__(self, num_classes: int, channels: int, image_size: int, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = channels, image_size
        while size > 4:
            layers += [spectral_norm(nn.Conv2d(cin, width, 3, stride=2, padding=1)),
                       nn.LeakyReLU(0.2)]
            cin, size, width = width, (size + 1) // 2, min(width * 2, 256)
        layers += [spectral_norm(nn.Conv2d(cin, cin, 3, padding=1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(cin, 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, cin))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        h = self.features(x).sum((2, 3))  # (B, C)
        return self.head(h).squeeze(1) + (self.embed(labels) * h).sum(1)


class GanDesign:
    """Hinge GAN with ``Discriminator``, Adam at ``lr`` for both, EMA of G with ``ema_decay``."""

    name = "gan"

    def __init__(self, generator: Generator, *, lr: float = 2e-4, ema_decay: float = 0.999,
                 seed: int = 0) -> None:
        c = generator.config
        self.gen = generator
        self.ema = copy.deepcopy(generator).requires_grad_(False)
        self.disc = Discriminator(c.num_classes, c.channels, c.image_size).to(
            generator.const.device)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.0, 0.99))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.0, 0.99))
        self.ema_decay = ema_decay
        self.seed = seed
        self.steps = 0

    def step(self, real: Tensor, labels: Tensor, noise: torch.Generator) -> dict[str, float]:
        self.steps += 1
        z = torch.randn(real.shape[0], self.gen.config.z_dim, generator=noise, device=real.device)
        fake = self.gen(z, labels)
        seed_d = self.seed * 1_000_003 + 2 * self.steps
        d_real = self.disc(augment(real, seed_d), labels)
        d_fake = self.disc(augment(fake.detach(), seed_d + 1), labels)
        d_loss = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        g_loss = -self.disc(augment(fake, seed_d + 1), labels).mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        # the average warms up (decay (1 + t) / (10 + t) until it reaches ema_decay), so a short
        # run does not save weights that are mostly the random initialisation
        decay = min(self.ema_decay, (1.0 + self.steps) / (10.0 + self.steps))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.gen.parameters(), strict=True):
                e.lerp_(p, 1.0 - decay)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    def generator(self) -> Generator:
        return self.ema
