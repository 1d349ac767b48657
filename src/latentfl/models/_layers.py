"""Building blocks shared by the architectures: normalisation choice and option checks.

Norms are GroupNorm-style by default because the distillation engine calls students as pure
functions of a flat parameter vector: GroupNorm has no running buffers, so a functional call
on a batch depends only on the parameters and that batch.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from latentfl.errors import ModelError

NORMS = ("instance", "group", "batch", "layer", "none")

#: Upper bound on the group count of ``norm="group"``; the count used divides the channels.
MAX_GROUPS = 32


def norm2d(kind: str, channels: int) -> nn.Module:
    """A normalisation layer over ``channels`` feature maps of the named ``kind``.

    ``instance`` normalises each channel alone (GroupNorm with one group per channel, affine);
    ``group`` uses gcd(32, channels) groups; ``layer`` normalises over all channels and positions
    (GroupNorm with one group, per-channel affine); ``batch`` is BatchNorm2d (running buffers);
    ``none`` is the identity.
    """
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(MAX_GROUPS, channels), channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ModelError(f"norm {kind!r} is not known; expected one of {', '.join(NORMS)}.")


def check_choice(model: str, option: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ModelError naming the option."""
    if value not in choices:
        raise ModelError(
            f"{model} option {option}={value!r} is not valid; expected one of {', '.join(choices)}."
        )
    return value


def check_positive_int(model: str, option: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1, else raise ModelError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(
            f"{model} option {option}={value!r} is not valid; expected an integer >= 1."
        )
    return value
