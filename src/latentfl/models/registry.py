"""Architecture registry: one name per architecture, one builder, one set of options."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from latentfl.errors import ModelError
from latentfl.models.alexnet import build_alexnet
from latentfl.models.convnet import build_convnet
from latentfl.models.resnet import build_resnet18, build_resnet34
from latentfl.models.vgg import build_vgg11
from latentfl.models.vit import build_vit

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "convnet": build_convnet,
    "resnet18": build_resnet18,
    "resnet34": build_resnet34,
    "vgg11": build_vgg11,
    "alexnet": build_alexnet,
    "vit": build_vit,
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def model_options(name: str) -> dict[str, Any]:
    """The options ``name`` accepts, with their defaults."""
    builder = _builder(name)
    params = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_model(
    name: str, num_classes: int, in_shape: tuple[int, int, int], **options: Any
) -> nn.Module:
    """Build architecture ``name`` for ``in_shape`` = (C, H, W) images and ``num_classes`` classes.

    Raises ModelError for an unknown name, an unknown option or an invalid value, naming it.
    """
    valid = model_options(name)
    for key in options:
        if key not in valid:
            expected = ", ".join(sorted(valid)) or "none"
            raise ModelError(f"model {name} has no option {key!r}; valid options: {expected}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes={num_classes!r} is not valid; expected an integer >= 1.")
    shape = tuple(in_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                  for s in shape):
        raise ModelError(
            f"in_shape={in_shape!r} is not valid; expected (channels, height, width) >= 1."
        )
    return _builder(name)(num_classes, shape, **options)


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ModelError(
            f"model {name!r} is not known; expected one of {', '.join(MODEL_NAMES)}."
        ) from None
