"""AlexNet for 32x32 images: five convolutions (5x5, 5x5, 3x3, 3x3, 3x3), three 2x2 max-pools.

The ImageNet network's stride-4 11x11 stem and 4096-wide dense layers do not fit 32x32 inputs;
this variant keeps the layer pattern (two wide-kernel convolutions with pooling, three 3x3
convolutions, a final pool) and classifies the 4x4 feature map with one linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from latentfl.errors import ModelError
from latentfl.models._layers import NORMS, check_choice, check_positive_int, norm2d

# (channels at base width 64, kernel size, max-pool after)
ALEXNET_LAYOUT = ((64, 5, True), (192, 5, True), (384, 3, False), (256, 3, False), (256, 3, True))


class AlexNet(nn.Module):
    """Conv-(norm)-ReLU layers with three max-pools and a linear classifier."""

    def __init__(
        self, num_classes: int, in_shape: tuple[int, int, int], *, width: int, norm: str
    ) -> None:
        super().__init__()
        channels, height, width_px = in_shape
        layers: list[nn.Module] = []
        for base, kernel, pool in ALEXNET_LAYOUT:
            out_channels = base * width // 64
            layers += [nn.Conv2d(channels, out_channels, kernel, padding=kernel // 2),
                       norm2d(norm, out_channels), nn.ReLU()]
            if pool:
                layers.append(nn.MaxPool2d(2))
                height, width_px = height // 2, width_px // 2
            channels = out_channels
        if height < 1 or width_px < 1:
            raise ModelError(
                f"alexnet needs images of at least 8x8 (three 2x2 pools); "
                f"got {in_shape[1]}x{in_shape[2]}."
            )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * height * width_px, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, 32, 32) -> (N, 4w, 4, 4) -> (N, classes)
        return self.classifier(self.features(x).flatten(1))


def build_alexnet(
    num_classes: int, in_shape: tuple[int, int, int], *, width: int = 64, norm: str = "none"
) -> AlexNet:
    """Validate the options and build the 32x32 AlexNet; ``width`` scales every layer."""
    check_positive_int("alexnet", "width", width)
    check_choice("alexnet", "norm", norm, NORMS)
    return AlexNet(num_classes, in_shape, width=width, norm=norm)
