"""The one local training loop and the one evaluation loop.

Participants, the simulator and the server all train through :func:`train`, so FedAvg, FedProx,
DP-SGD and the global model see the same loop. It reads top to bottom: data order, optimizer,
optional privacy wrapping, then per batch: augment, forward, loss, backward, step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from latentfl.config import option
from latentfl.errors import DataError, ModelError
from latentfl.seeding import derive_seed

#: ``wrap(model, optimizer, loader) -> (model, optimizer, loader)``, e.g. Opacus's make_private.
Wrap = Callable[[nn.Module, torch.optim.Optimizer, DataLoader], tuple[Any, Any, Any]]

CROP_PADDING = 4


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings; also the ``[strategy.local]`` config section."""

    epochs: int = option(1, help="Passes over the local data.", min=1)
    batch_size: int = option(64, help="Examples per optimizer step.", min=1)
    lr: float = option(0.01, help="Learning rate.", min=0.0, min_exclusive=True)
    optimizer: Literal["sgd", "adam"] = option(
        "sgd", help="Optimizer: sgd (with momentum) or adam."
    )
    momentum: float = option(0.0, help="SGD momentum (sgd only).", min=0.0, max=1.0)
    weight_decay: float = option(0.0, help="L2 weight decay added by the optimizer.", min=0.0)
    augment: bool = option(
        False, help="Random crop (4-pixel zero padding) and horizontal flip of every batch."
    )
    prox_mu: float = option(
        0.0, help="FedProx mu: adds mu/2 times the squared distance to the starting weights to the "
        "loss (0 turns it off).", min=0.0
    )
    max_steps: int | None = option(
        None, help="Stop after this many optimizer steps, even mid-epoch (omit for no cap).", min=1
    )
    seed: int = option(0, help="Seed of the data order and the augmentation draws.", min=0)
    max_update_norm: float | None = option(
        None, help="Clip the trained weights' change from the task's to this L2 norm before "
        "returning them (set by the coordinator under strategy.robust.rule = 'norm_bound' with "
        "clip_norm; omit for no clip).", min=0.0, min_exclusive=True)

    def problems(self) -> list[str]:
        """Cross-field checks, run by the config loader."""
        if self.optimizer == "adam" and self.momentum > 0:
            return [f"'momentum' = {self.momentum} applies to sgd only; remove it or use "
                    f"optimizer = 'sgd'."]
        return []


@dataclass(frozen=True)
class TrainResult:
    """``steps`` optimizer steps over ``examples`` examples; ``loss`` the mean batch loss."""

    steps: int
    examples: int
    loss: float


@dataclass(frozen=True)
class EvalResult:
    """Top-1 ``accuracy`` in [0, 1] and mean cross-entropy ``loss`` over ``n`` examples."""

    accuracy: float
    loss: float
    n: int


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    wrap: Wrap | None = None,
) -> TrainResult:
    """Train ``model`` in place on normalised images ``x`` (N, C, H, W) and labels ``y`` (N,).

    The model is moved to ``device`` and stays there. Deterministic for ``config.seed`` on CPU.
    Raises ModelError naming the step if the loss becomes non-finite.
    """
    check_data(x, y)
    device = torch.device(device)
    was_training = model.training
    model.to(device).train()

    # Data order from a generator seeded by the config; augmentation draws from a second one.
    order = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=config.batch_size, shuffle=True,
                        generator=order)
    augment_rng = torch.Generator().manual_seed(derive_seed(config.seed, "augment"))

    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)

    # Steps are counted by a hook on the plain optimizer, so a wrapper that splits a logical
    # batch into physical ones (Opacus's BatchMemoryManager) and skips steps is counted right.
    steps = 0

    def count_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        nonlocal steps
        steps += 1

    hooks = [optimizer.register_step_post_hook(count_step)]

    # FedProx: the gradient of mu/2 ||w - w_start||^2 is mu (w - w_start). It is added to each
    # parameter's gradient by a hook that runs right before the plain optimizer's step, i.e.
    # after any DP wrapper has clipped and noised the data gradient: the term does not depend on
    # data, so it costs no privacy, and a DP optimizer cannot drop it.
    if config.prox_mu > 0:
        start = {p: p.detach().clone() for p in params}

        def add_prox_gradient(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            with torch.no_grad():
                for p, w0 in start.items():
                    pull = (p - w0).mul_(config.prox_mu)
                    p.grad = pull if p.grad is None else p.grad.add_(pull)

        hooks.append(optimizer.register_step_pre_hook(add_prox_gradient))

    if wrap is not None:
        model, optimizer, loader = wrap(model, optimizer, loader)

    examples = 0
    loss_sum = 0.0
    try:
        for _ in range(config.epochs):
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                if config.augment:
                    xb = augment_batch(xb, augment_rng)
                logits = model(xb)  # (B, classes)
                if len(xb) == 0:
                    # A Poisson draw (DP-SGD) can be empty. The DP optimizer must still take its
                    # noise-only step (the accounting assumes one noisy step per draw), so the
                    # loss is the empty sum: zero, with a graph for the backward hooks.
                    loss = F.cross_entropy(logits, yb, reduction="sum")
                else:
                    loss = F.cross_entropy(logits, yb)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise ModelError(
                            f"training loss is {value} at step {steps + 1}; expected a finite "
                            f"value (lower the learning rate or check the data)."
                        )
                    examples += len(xb)
                    loss_sum += value * len(xb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if config.max_steps is not None and steps >= config.max_steps:
                    break
            if config.max_steps is not None and steps >= config.max_steps:
                break
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return TrainResult(steps=steps, examples=examples, loss=loss_sum / max(examples, 1))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Accuracy and mean cross-entropy of ``model`` on ``x``, ``y``, in eval mode."""
    check_data(x, y)
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    correct = 0
    loss_sum = 0.0
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return EvalResult(accuracy=correct / len(x), loss=loss_sum / len(x), n=len(x))


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop after 4-pixel zero padding, and a horizontal flip with probability 1/2.

    One draw per image from ``generator`` (a CPU generator, so CPU and GPU runs crop alike).
    Zero padding of normalised images pads with the mean colour.
    """
    n, c, h, w = x.shape
    pad = CROP_PADDING
    padded = F.pad(x, (pad, pad, pad, pad))  # (N, C, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads columns right to left
    index_n = torch.arange(n, device=x.device)[:, None, None, None]
    index_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[index_n, index_c, rows[:, None, :, None], cols[:, None, None, :]]


def check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise DataError unless ``x`` is float (N, C, H, W) and ``y`` int64 (N,) with N >= 1."""
    if x.dim() != 4 or not x.is_floating_point():
        raise DataError(
            f"images have shape {tuple(x.shape)} and dtype {x.dtype}; expected float (N, C, H, W)."
        )
    if y.dim() != 1 or y.dtype != torch.int64 or len(y) != len(x):
        raise DataError(
            f"labels have shape {tuple(y.shape)} and dtype {y.dtype}; expected int64 ({len(x)},)."
        )
    if len(x) == 0:
        raise DataError("the dataset is empty; expected at least one example.")


__all__ = [
    "EvalResult",
    "TrainConfig",
    "TrainResult",
    "Wrap",
    "augment_batch",
    "check_data",
    "evaluate",
    "train",
]
