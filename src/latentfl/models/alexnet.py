"""AlexNet for 32x32 images: five convolutions (5x5, 5x5, 3x3, 3x3, 3x3), three 2x2 max-pools.

The ImageNet network's stride-4 11x11 stem and 4096-wide dense layers do not fit 32x32 inputs;
this variant keeps the layer pattern (two wide-kernel convolutions with pooling, three 3x3
convolutions, a final pool) and classifies the 4x4 feature map with one linear layer.
"""

from __future__ import annotations

from latentfl.models._layers import NORMS, check_choice, check_positive_int
from latentfl.models.pooled import PooledConvNet

# (channels at base width 64, kernel size, max-pool after)
ALEXNET_LAYOUT = ((64, 5, True), (192, 5, True), (384, 3, False), (256, 3, False), (256, 3, True))


def build_alexnet(
    num_classes: int, in_shape: tuple[int, int, int], *, width: int = 64, norm: str = "none"
) -> PooledConvNet:
    """Validate the options and build the 32x32 AlexNet; ``width`` scales every layer."""
    check_positive_int("alexnet", "width", width)
    check_choice("alexnet", "norm", norm, NORMS)
    return PooledConvNet("alexnet", ALEXNET_LAYOUT, num_classes, in_shape, width=width, norm=norm)
