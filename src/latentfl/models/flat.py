"""A model's parameters as one flat vector: the ONE place that defines the order.

The order is ``model.named_parameters()`` order. Distillation treats a student network as a
pure function of such a vector (:func:`functional_forward`), and the strategies and trajectory
files store weights in it, so every component must go through these helpers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from latentfl.errors import ModelError

ParamShapes = list[tuple[str, tuple[int, ...]]]


def param_shapes(model: nn.Module) -> ParamShapes:
    """``(name, shape)`` of every parameter, in flat-vector order."""
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]


def num_params(shapes: ParamShapes) -> int:
    """Length of the flat vector for ``shapes``."""
    return sum(_numel(shape) for _, shape in shapes)


def flatten_params(model: nn.Module) -> torch.Tensor:
    """All parameters as one 1-D tensor (a detached copy), in flat-vector order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def flatten_named(tensors: dict[str, torch.Tensor], shapes: ParamShapes) -> torch.Tensor:
    """The parameters among ``tensors`` (e.g. a state dict) as one new 1-D vector, in the
    flat-vector order ``shapes`` gives; other entries (buffers) are ignored."""
    return torch.cat([tensors[name].detach().reshape(-1) for name, _ in shapes]).clone()


def unflatten_params(flat: torch.Tensor, shapes: ParamShapes) -> dict[str, torch.Tensor]:
    """Name -> tensor views into ``flat`` (differentiable: gradients flow back to ``flat``)."""
    expected = num_params(shapes)
    if flat.dim() != 1 or flat.numel() != expected:
        raise ModelError(
            f"flat parameter vector has shape {tuple(flat.shape)}; "
            f"expected ({expected},) for this model."
        )
    pieces = torch.split(flat, [_numel(shape) for _, shape in shapes])
    return {name: piece.view(shape) for (name, shape), piece in zip(shapes, pieces, strict=True)}


def load_flat_(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy ``flat`` into the model's parameters in place."""
    params = unflatten_params(flat.detach(), param_shapes(model))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])


def functional_forward(model: nn.Module, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with its parameters taken from ``flat`` and its own buffers.

    Differentiable with respect to ``flat`` and ``x``, to any order (``create_graph=True``): the
    model's modules are reused, but none of its parameters is read or changed.
    """
    params = unflatten_params(flat, param_shapes(model))
    return functional_call(model, {**params, **dict(model.named_buffers())}, (x,))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
