"""A student network as a pure function of one flat parameter vector.

The flat order is ``model.named_parameters()`` order, the one the model registry defines
(``latentfl.models.flatten_params``). Buffers are taken from the module as they are; the
distillation students use GroupNorm/instance-style norms, so there are none that change.

A student can run several participants at once: ``theta`` of shape ``(P, D)`` and inputs of
shape ``(P, B, C, H, W)``. On a GPU they are mapped with ``torch.func.vmap``, which turns the
convolutions into grouped ones, so P participants cost one launch per layer instead of P; on a
CPU, which is not launch-bound and runs grouped convolutions slowly, they go one at a time.

On a CPU, the default ConvNet runs through fused functions with a hand-derived double backward
(:mod:`latentfl.distill._fused_convnet`, same math, faster), one participant at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import vmap

from latentfl.distill._fused_convnet import FusedConvNet
from latentfl.errors import DistillError
from latentfl.models import flatten_params, functional_forward, num_params, param_shapes

__all__ = ["FunctionalStudent"]


class FunctionalStudent:
    """Evaluate ``model`` with its parameters taken from a flat vector (differentiable)."""

    def __init__(self, model: nn.Module) -> None:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise DistillError(
                f"student {type(model).__name__} has BatchNorm layers, whose running statistics "
                "change in place while unrolling; expected GroupNorm/instance norm (for the "
                "convnet: norm='instance').")
        self.model = model
        self.numel = num_params(param_shapes(model))
        self._many = vmap(self._forward_one, in_dims=(0, 0))
        self._fused = FusedConvNet.of(model)

    def flatten(self) -> Tensor:
        """The model's current parameters as one detached 1-D vector."""
        return flatten_params(self.model)

    def _forward_one(self, theta: Tensor, x: Tensor) -> Tensor:
        return functional_forward(self.model, theta, x)

    def _forward_single(self, theta: Tensor, x: Tensor) -> Tensor:
        """One participant, outside ``vmap``: the fused CPU path where it applies."""
        if self._fused is not None and x.device.type == "cpu" and self._fused.accepts(x):
            return self._fused(theta, x)
        return self._forward_one(theta, x)

    def __call__(self, theta: Tensor, x: Tensor) -> Tensor:
        """Logits: ``theta (D,), x (B,C,H,W) -> (B,K)`` or ``theta (P,D), x (P,B,C,H,W) -> (P,B,K)``."""
        if theta.shape[-1] != self.numel:
            raise DistillError(
                f"flat parameter vector has {theta.shape[-1]} entries; the student model "
                f"expects {self.numel}."
            )
        if theta.dim() == 1:
            return self._forward_single(theta, x)
        if theta.shape[0] == 1 or x.device.type == "cpu":
            # a CPU is not launch-bound: vmap's grouped convolutions only cost there
            return torch.stack([self._forward_single(t, xp) for t, xp in zip(theta, x, strict=True)])
        return self._many(theta, x)
