"""VGG-11 for small images, with GroupNorm after every convolution by default."""

from __future__ import annotations

from latentfl.models._layers import NORMS, check_choice, check_positive_int
from latentfl.models.pooled import PooledConvNet

# 3x3 convolutions: (channels at base width 64, kernel, max-pool after); five pools for 32x32
VGG11_LAYOUT = ((64, 3, True), (128, 3, True), (256, 3, False), (256, 3, True), (512, 3, False),
                (512, 3, True), (512, 3, False), (512, 3, True))


def build_vgg11(
    num_classes: int, in_shape: tuple[int, int, int], *, width: int = 64, norm: str = "group"
) -> PooledConvNet:
    """Validate the options and build VGG-11; ``width`` scales every layer (64 is the paper's)."""
    check_positive_int("vgg11", "width", width)
    check_choice("vgg11", "norm", norm, NORMS)
    return PooledConvNet("vgg11", VGG11_LAYOUT, num_classes, in_shape, width=width, norm=norm)
