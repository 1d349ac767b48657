"""ConvNet: the small student/surrogate network of the dataset-distillation literature.

``depth`` blocks of [3x3 conv (``width`` channels, padding 1), norm, ReLU, 2x2 pooling], then one
linear classifier on the flattened features. With the defaults (width 128, depth 3, instance
norm, average pooling) on 3x32x32 inputs and 10 classes it has exactly 320,010 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from latentfl.errors import ModelError
from latentfl.models._layers import NORMS, check_choice, check_positive_int, norm2d

POOLINGS = ("avg", "max", "none")


class ConvNet(nn.Module):
    """Conv-norm-ReLU-pool blocks and a linear head; activations are never modified in place."""

    def __init__(
        self,
        num_classes: int,
        in_shape: tuple[int, int, int],
        *,
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        channels, height, width_px = in_shape
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), norm2d(norm, width), nn.ReLU()]
            if pooling == "avg":
                layers.append(nn.AvgPool2d(2))
            elif pooling == "max":
                layers.append(nn.MaxPool2d(2))
            if pooling != "none":
                height, width_px = height // 2, width_px // 2
            channels = width
        if height < 1 or width_px < 1:
            raise ModelError(
                f"convnet depth={depth} with {pooling} pooling shrinks a "
                f"{in_shape[1]}x{in_shape[2]} image to nothing; expected depth <= log2 of the "
                f"smaller side."
            )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * height * width_px, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, C, H, W) -> features (N, width, H / 2**depth, W / 2**depth) -> logits (N, classes)
        return self.classifier(self.features(x).flatten(1))


def build_convnet(
    num_classes: int,
    in_shape: tuple[int, int, int],
    *,
    width: int = 128,
    depth: int = 3,
    norm: str = "instance",
    pooling: str = "avg",
) -> ConvNet:
    """Validate the options and build a :class:`ConvNet`."""
    check_positive_int("convnet", "width", width)
    check_positive_int("convnet", "depth", depth)
    check_choice("convnet", "norm", norm, NORMS)
    check_choice("convnet", "pooling", pooling, POOLINGS)
    return ConvNet(num_classes, in_shape, width=width, depth=depth, norm=norm, pooling=pooling)
