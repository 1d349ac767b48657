"""Plain convolution stacks with max-pools and one linear classifier (AlexNet, VGG-11 shapes).

A layout lists, per convolution, its channels at base width 64, its kernel size and whether a
2x2 max-pool follows; ``width`` scales every layer's channels by ``width / 64``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from latentfl.errors import ModelError
from latentfl.models._layers import norm2d

#: (channels at base width 64, kernel size, max-pool after)
Layout = Sequence[tuple[int, int, bool]]


class PooledConvNet(nn.Module):
    """Conv-(norm)-ReLU layers, some followed by a 2x2 max-pool, then a linear classifier."""

    def __init__(self, name: str, layout: Layout, num_classes: int,
                 in_shape: tuple[int, int, int], *, width: int, norm: str) -> None:
        super().__init__()
        channels, height, width_px = in_shape
        pools = sum(pool for _, _, pool in layout)
        if height >> pools < 1 or width_px >> pools < 1:
            raise ModelError(
                f"{name} needs images of at least {2**pools}x{2**pools} ({pools} 2x2 max-pools); "
                f"got {height}x{width_px}."
            )
        layers: list[nn.Module] = []
        for base, kernel, pool in layout:
            out_channels = base * width // 64
            layers += [nn.Conv2d(channels, out_channels, kernel, padding=kernel // 2),
                       norm2d(norm, out_channels), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * (height >> pools) * (width_px >> pools),
                                    num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, channels, H / 2^pools, W / 2^pools) -> (N, classes)
        return self.classifier(self.features(x).flatten(1))


__all__ = ["Layout", "PooledConvNet"]
