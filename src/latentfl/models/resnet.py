"""ResNet-18/34 for small images: 3x3 stem, no max-pool, four stages of basic blocks.

GroupNorm by default (no running buffers, so the model is a pure function of its weights and
works with per-sample gradients); ``norm="batch"`` gives the classic BatchNorm network.
"""

from __future__ import annotations

import torch
from torch import nn

from latentfl.models._layers import NORMS, check_choice, check_positive_int, norm2d

STAGE_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual shortcut (1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm2d(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = norm2d(norm, channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                norm2d(norm, channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, four stages (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2), global average pool, linear."""

    def __init__(
        self, num_classes: int, in_channels: int, blocks: tuple[int, ...], width: int, norm: str
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), norm2d(norm, width), nn.ReLU()
        )
        stages: list[nn.Module] = []
        channels = width
        for i, count in enumerate(blocks):
            out_channels = width * 2**i
            stride = 1 if i == 0 else 2
            for j in range(count):
                stages.append(BasicBlock(channels, out_channels, stride if j == 0 else 1, norm))
                channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, 8w, H/8, W/8) -> (N, 8w) -> (N, classes)
        return self.classifier(self.pool(self.stages(self.stem(x))).flatten(1))


def _builder(name: str):
    def build(
        num_classes: int, in_shape: tuple[int, int, int], *, width: int = 64, norm: str = "group"
    ) -> ResNet:
        check_positive_int(name, "width", width)
        check_choice(name, "norm", norm, NORMS)
        return ResNet(num_classes, in_shape[0], STAGE_BLOCKS[name], width, norm)

    build.__name__ = f"build_{name}"
    build.__doc__ = f"Validate the options and build a {name} (base width ``width``, ``norm``)."
    return build


build_resnet18 = _builder("resnet18")
build_resnet34 = _builder("resnet34")
