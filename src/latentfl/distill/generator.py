"""The built-in class-conditional generator and its F-space split.

A mapping network turns ``z`` and a class embedding into a style vector ``w``. The synthesis
network starts from a learned 4x4 constant; layer 1 is a modulated 3x3 convolution at 4x4 and
every later layer doubles the resolution and applies another one, up to the larger image side
(4, 8, 16, 32 for 32x32 images: ``num_layers = 4``); a modulated 1x1 ``to_rgb`` makes the
image, resized to the image's height and width when they are not that power of two (28x28,
64x48, 224x224). Each layer's modulation is its *style code*, an affine map of ``w``. A
label-free generator (``conditional = false``) ignores the labels it is given: one embedding
stands for every image, so its samples carry no class information.

F-space at split layer ``k`` (``0 <= k <= num_layers``): the feature map after layer ``k`` (for
``k=0`` the constant itself) plus the style codes of the layers after ``k`` and of ``to_rgb``.
:meth:`Generator.latents` makes such a latent, :meth:`Generator.render` finishes the forward pass
from it, so ``render(latents(...))`` equals ``forward(z, labels)`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentfl.config import option
from latentfl.errors import DistillError

__all__ = ["FLatent", "Generator", "GeneratorConfig", "default_split_layer", "image_hw"]


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the built-in generator (saved as JSON beside its weights)."""

    num_classes: int = option(10, help="Number of classes the generator is conditioned on.", min=1)
    image_size: int = option(32, help="Height of the images (and width unless image_width).",
                             min=4)
    channels: int = option(3, help="Image channels.", min=1)
    image_width: int = option(0, help="Width of the images; 0 = image_size (square).", min=0)
    conditional: bool = option(True, help="Condition on class labels; false = label-free prior.")
    z_dim: int = option(64, help="Size of the noise vector z.", min=1)
    w_dim: int = option(128, help="Size of the style vector w.", min=1)
    mapping_layers: int = option(2, help="Layers of the mapping network.", min=1)
    base_channels: int = option(128, help="Feature channels at 4x4 (halved per doubling).", min=1)
    min_channels: int = option(32, help="Fewest feature channels of any layer.", min=1)


def image_hw(config: GeneratorConfig) -> tuple[int, int]:
    """``(height, width)`` of the images ``config`` describes."""
    return config.image_size, config.image_width or config.image_size


def default_split_layer(image_size: int) -> int:
    """The split layer used when none is configured: the 8x8 feature map for small images,
    16x16 from 64 pixels up (a large, expressive latent that still renders cheaply)."""
    return 2 if image_size < 64 else 3


@dataclass
class FLatent:
    """A trainable F-space latent: ``feature (B, C, h, w)`` and one style code per later layer."""

    feature: Tensor
    styles: list[Tensor]
    layer: int

    def tensors(self) -> list[Tensor]:
        return [self.feature, *self.styles]

    def slice(self, start: int, stop: int) -> FLatent:
        """Images ``start:stop`` of the batch (differentiable views)."""
        return FLatent(self.feature[start:stop], [s[start:stop] for s in self.styles], self.layer)


class _ModConv(nn.Module):
    """Modulated convolution (input scaled by the style, output demodulated per sample)."""

    def __init__(self, w_dim: int, cin: int, cout: int, kernel: int, demodulate: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.affine = nn.Linear(w_dim, cin)
        nn.init.ones_(self.affine.bias)
        self.scale = 1.0 / math.sqrt(cin * kernel * kernel)
        self.demodulate = demodulate
        self.padding = kernel // 2

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        weight = self.weight * self.scale
        out = F.conv2d(x * style[:, :, None, None], weight, padding=self.padding)
        if self.demodulate:  # d[b, o] = 1 / ||W[o] * s[b]||
            d = torch.rsqrt(style.pow(2) @ weight.pow(2).sum((2, 3)).t() + 1e-8)
            out = out * d[:, :, None, None]
        return out + self.bias[None, :, None, None]


class Generator(nn.Module):
    """Class-conditional style-based generator; output mapped to the data's normalisation."""

    def __init__(self, config: GeneratorConfig, *, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.num_classes, c.z_dim)
        layers: list[nn.Module] = []
        width = c.z_dim * 2
        for _ in range(c.mapping_layers):
            layers += [nn.Linear(width, c.w_dim), nn.LeakyReLU(0.2)]
            width = c.w_dim
        self.mapping = nn.Sequential(*layers)
        if min(image_hw(c)) < 4:
            raise DistillError(f"the generator makes images of at least 4x4 pixels; got "
                               f"{image_hw(c)[0]}x{image_hw(c)[1]}.")
        self.num_layers = 1 + max(0, math.ceil(math.log2(max(image_hw(c)) / 4)))
        floor = min(c.min_channels, c.base_channels)
        chans = [max(floor, c.base_channels >> j) for j in range(self.num_layers)]
        self.const = nn.Parameter(torch.randn(chans[0], 4, 4))
        self.convs = nn.ModuleList(
            _ModConv(c.w_dim, chans[max(j - 1, 0)], chans[j], 3, True)
            for j in range(self.num_layers))
        self.to_rgb = _ModConv(c.w_dim, chans[-1], c.channels, 1, False)
        self.set_normalisation(mean or (0.5,) * c.channels, std or (0.5,) * c.channels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the rendered images."""
        return (self.config.channels, *image_hw(self.config))

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def conditional(self) -> bool:
        """False for a label-free prior: labels change nothing in its images."""
        return self.config.conditional

    @property
    def default_layer(self) -> int:
        """The split layer used when none is configured (:func:`default_split_layer`)."""
        return default_split_layer(max(image_hw(self.config)))

    def set_normalisation(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Render images normalised with this per-channel mean and std (in [0, 1] units)."""
        if len(mean) != self.config.channels or len(std) != self.config.channels:
            raise DistillError(f"normalisation has {len(mean)}/{len(std)} channels; the generator "
                               f"makes {self.config.channels}.")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def style_vector(self, z: Tensor, labels: Tensor) -> Tensor:
        """``w (B, w_dim)`` from ``z (B, z_dim)`` and int ``labels (B,)``."""
        if not self.config.conditional:
            labels = torch.zeros_like(labels)
        h = torch.cat([F.normalize(z, dim=1), F.normalize(self.embed(labels), dim=1)], 1)
        return self.mapping(h * math.sqrt(self.config.z_dim))

    def _layer(self, j: int, h: Tensor, style: Tensor) -> Tensor:
        if j > 0:
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.leaky_relu(self.convs[j](h, style), 0.2) * math.sqrt(2.0)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer <= self.num_layers:
            raise DistillError(f"split layer {layer} is out of range; expected 0..{self.num_layers}.")

    def split(self, w: Tensor, layer: int) -> FLatent:
        """The F-space latent at ``layer`` for style vectors ``w`` (differentiable in ``w``)."""
        self._check_layer(layer)
        h = self.const.expand(w.shape[0], *self.const.shape)
        for j in range(layer):
            h = self._layer(j, h, self.convs[j].affine(w))
        styles = [self.convs[j].affine(w) for j in range(layer, self.num_layers)]
        return FLatent(h, [*styles, self.to_rgb.affine(w)], layer)

    def render(self, latent: FLatent) -> Tensor:
        """Images ``(B, C, H, W)`` normalised like the real data, from an F-space latent."""
        h = latent.feature
        if h.device.type == "cpu":  # oneDNN's native layout on a CPU: its convolutions run faster
            h = h.contiguous(memory_format=torch.channels_last)
        for j, style in zip(range(latent.layer, self.num_layers), latent.styles, strict=False):
            h = self._layer(j, h, style)
        out = self.to_rgb(h, latent.styles[-1])
        size = image_hw(self.config)
        if tuple(out.shape[-2:]) != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return (((torch.tanh(out) + 1.0) / 2.0 - self.mean) / self.std).contiguous()

    def forward(self, z: Tensor, labels: Tensor) -> Tensor:
        """Unsplit forward pass: images from noise and labels."""
        return self.render(self.split(self.style_vector(z, labels), 0))

    def latents(self, labels: Tensor, seed: int, *, layer: int) -> FLatent:
        """Fresh detached F-space latents at ``layer`` for ``labels``, ``z`` drawn from ``seed``."""
        z = self.noise(labels.shape[0], seed, labels.device)
        with torch.no_grad():
            lat = self.split(self.style_vector(z, labels), layer)
        return FLatent(lat.feature.contiguous(), [s.contiguous() for s in lat.styles], layer)

    def noise(self, n: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
        """``z (n, z_dim)`` drawn from ``seed``."""
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        return torch.randn(n, self.config.z_dim, generator=gen, device=device,
                           dtype=self.const.dtype)
