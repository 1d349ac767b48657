"""The VAE prior design: the built-in generator as the decoder of a class-conditional VAE.

A small encoder maps an image and its class to ``(mu, logvar)`` of ``z``; the decoder is the
:class:`~latentfl.distill.generator.Generator` itself (``z`` + class -> image), so F-space and
``latents(labels, seed)`` (``z ~ N(0, I)``) are those of any other generator. The loss per image
is the squared reconstruction error summed over pixels (in the data's normalised units) plus
``beta`` times the KL divergence of ``N(mu, exp(logvar))`` from ``N(0, I)``. Trained by
reconstruction, every training image pulls the decoder towards it: it cannot mode-collapse,
which a GAN on a CPU budget does (docs/results.md, "Generator prior for FedDGM", measures both).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latentfl.distill.generator import Generator, image_hw

__all__ = ["Encoder", "VaeDesign"]


class Encoder(nn.Module):
    """Strided conv blocks that halve both sides while the shorter one is at least 8 pixels,
    an average pool to 4x4 (so any height and width, odd or not, end in the same 4x4 grid), then
    a linear head on the features and a class embedding (label-free: one embedding for all)."""

    def __init__(self, num_classes: int, channels: int, image_hw: tuple[int, int], z_dim: int,
                 width: int = 32, *, conditional: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, short = channels, min(image_hw)
        while short >= 8:  # a 4x4 stride-2 conv with padding 1 maps n pixels to n // 2
            layers += [nn.Conv2d(cin, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin, short, width = width, short // 2, min(width * 2, 256)
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.conditional = conditional
        self.embed = nn.Embedding(num_classes, 64)
        self.head = nn.Linear(cin * 16 + 64, 2 * z_dim)

    def forward(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)``, each ``(B, z_dim)``."""
        if not self.conditional:
            labels = torch.zeros_like(labels)
        h = torch.cat([self.features(x), self.embed(labels)], 1)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)


class VaeDesign:
    """Train ``generator`` as a VAE decoder with Adam (``lr``) on reconstruction + ``beta`` * KL."""

    name = "vae"

    def __init__(self, generator: Generator, *, lr: float = 1e-3, beta: float = 1.0) -> None:
        c = generator.config
        self.decoder = generator
        self.encoder = Encoder(c.num_classes, c.channels, image_hw(c), c.z_dim,
                               conditional=c.conditional).to(generator.const.device)
        self.beta = beta
        params = [*self.decoder.parameters(), *self.encoder.parameters()]
        self.opt = torch.optim.Adam(params, lr=lr)

    def step(self, real: Tensor, labels: Tensor, noise: torch.Generator) -> dict[str, float]:
        """One Adam step on normalised ``real`` images; the losses, averaged over the batch."""
        mu, logvar = self.encoder(real, labels)
        eps = torch.randn(mu.shape, generator=noise, device=mu.device)
        recon = self.decoder(mu + eps * (0.5 * logvar).exp(), labels)
        rec = (recon - real).pow(2).flatten(1).sum(1).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()
        loss = rec + self.beta * kl
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"reconstruction": rec.item(), "kl": kl.item()}

    def generator(self) -> Generator:
        """The decoder: what is sampled and saved."""
        return self.decoder
