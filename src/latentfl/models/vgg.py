"""VGG-11 for small images, with GroupNorm after every convolution by default."""

from __future__ import annotations

import torch
from torch import nn

from latentfl.errors import ModelError
from latentfl.models._layers import NORMS, check_choice, check_positive_int, norm2d

# Channels of each 3x3 convolution at base width 64; "M" is a 2x2 max-pool.
VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """Conv-norm-ReLU stacks with max-pools, then a linear classifier on the flattened features."""

    def __init__(
        self, num_classes: int, in_shape: tuple[int, int, int], *, width: int, norm: str
    ) -> None:
        super().__init__()
        channels, height, width_px = in_shape
        layers: list[nn.Module] = []
        for item in VGG11_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                height, width_px = height // 2, width_px // 2
                continue
            out_channels = item * width // 64
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), norm2d(norm, out_channels),
                       nn.ReLU()]
            channels = out_channels
        if height < 1 or width_px < 1:
            raise ModelError(
                f"vgg11 needs images of at least 32x32 (five 2x2 pools); "
                f"got {in_shape[1]}x{in_shape[2]}."
            )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * height * width_px, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, 32, 32) -> (N, 8w, 1, 1) -> (N, classes)
        return self.classifier(self.features(x).flatten(1))


def build_vgg11(
    num_classes: int, in_shape: tuple[int, int, int], *, width: int = 64, norm: str = "group"
) -> VGG:
    """Validate the options and build VGG-11; ``width`` scales every layer (64 is the paper's)."""
    check_positive_int("vgg11", "width", width)
    check_choice("vgg11", "norm", norm, NORMS)
    return VGG(num_classes, in_shape, width=width, norm=norm)
