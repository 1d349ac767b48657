"""Trajectory matching: the loss and its gradients for one distillation iteration.

From ``start`` the functional student takes ``steps`` SGD steps of size ``alpha`` on (augmented
mini-batches of) the synthetic images; the loss is
``||theta_N - target||^2 / ||start - target||^2`` (plain sums), per participant.

Two unroll modes, one interface (:func:`match_trajectory`):

* ``full``: every step's gradient is taken with ``create_graph=True`` and the whole unroll is
  differentiated: the exact gradient, with activation memory growing with ``steps``.
* ``two_pass``: pass one runs the steps without a higher-order graph and keeps each step's weights
  (step ``i``'s augmented batch is replayed from ``derive_seed(seed, "step", i)``). With
  ``v = dL/dtheta_N``, pass two recomputes each step's gradient ``g_i`` on the same batch and
  backpropagates ``<g_i, -alpha v>`` to the images and label logits: the dependence of later
  weights on earlier batches (the ``d theta_{i+1} / d theta_i`` second-order terms) is dropped,
  so memory is one step's graph.
  ``dL/dalpha = -<v, sum_i g_i>`` in closed form. At ``steps=1`` both modes agree exactly.
  Pass one keeps the graphs of its first steps while they fit in ``keep_mib`` (what their
  saved tensors weigh, measured as they are saved), and pass two uses those instead of
  recomputing them: the same numbers, less work, memory bounded by the budget plus one step.

Everything carries a leading participant dimension P (1-D inputs are treated as P=1): P
independent problems share each kernel launch, and their losses are summed, which leaves each
participant's gradients its own.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from latentfl.distill._allocator import engine_heap
from latentfl.distill.augment import apply_augment, draw_augment
from latentfl.distill.functional import FunctionalStudent
from latentfl.errors import DistillError
from latentfl.seeding import derive_seed

__all__ = ["MatchResult", "batch_schedule", "match_trajectory"]

Unroll = Literal["full", "two_pass"]
DEFAULT_KEEP_MIB = 1024.0


@dataclass(frozen=True)
class MatchResult:
    """Loss per participant ``(P,)`` and gradients with the shapes of the inputs."""

    loss: Tensor
    image_grad: Tensor
    alpha_grad: Tensor
    label_grad: Tensor | None


def batch_schedule(
    num_images: int, steps: int, batch_size: int | None, *, seed: int, device: torch.device
) -> Tensor | None:
    """Indices ``(steps, batch_size)`` of the images each step sees, or None for full batches.

    Consecutive steps walk through shuffled epochs, so every image is used once before any is
    used twice (as in the reference implementations).
    """
    if batch_size is None or batch_size >= num_images:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    epochs = -(-steps * batch_size // num_images)
    order = torch.cat([torch.randperm(num_images, generator=gen, device=device)
                       for _ in range(epochs)])
    return order[: steps * batch_size].view(steps, batch_size)


def _step_loss(
    student: FunctionalStudent, theta: Tensor, images: Tensor, labels: Tensor,
    label_logits: Tensor | None, idx: Tensor | None, seed: int, augment: str | None,
) -> Tensor:
    """Mean training loss per participant ``(P,)`` on one (augmented) synthetic batch."""
    if idx is not None:
        images, labels = images[:, idx], labels[:, idx]
        label_logits = None if label_logits is None else label_logits[:, idx]
    p, b = images.shape[:2]
    x = images.flatten(0, 1)
    if augment is not None:
        ops = draw_augment(x.shape[0], (x.shape[2], x.shape[3]), seed=seed, device=x.device,
                           strategy=augment)
        x = apply_augment(x, ops)
    out = student(theta, x.view(images.shape))  # (P, B, K)
    if label_logits is None:
        ce = F.cross_entropy(out.flatten(0, 1), labels.flatten(), reduction="none")
        return ce.view(p, b).mean(1)
    soft = torch.softmax(label_logits, dim=-1)
    return -(soft * torch.log_softmax(out, dim=-1)).sum(-1).mean(1)


def match_trajectory(
    student: FunctionalStudent,
    start: Tensor,
    target: Tensor,
    images: Tensor,
    labels: Tensor,
    alpha: Tensor,
    *,
    steps: int,
    batch_size: int | None = None,
    unroll: Unroll = "full",
    seed: int = 0,
    augment: Literal["one", "all"] | None = "one",
    label_logits: Tensor | None = None,
    keep_mib: float = DEFAULT_KEEP_MIB,
) -> MatchResult:
    """Trajectory-matching loss and its gradients wrt images, alpha and (soft) label logits.

    Shapes: ``start, target (P, D)``, ``images (P, M, C, H, W)``, ``labels (P, M)`` int64,
    ``alpha (P,)``, ``label_logits (P, M, K)`` or None (hard labels). Unbatched inputs
    (``start (D,)``, ``images (M, C, H, W)``, ...) give unbatched outputs. No host syncs.
    ``keep_mib`` bounds the step graphs ``two_pass`` keeps between its passes (0: keep none).
    """
    if start.dim() == 1:
        res = match_trajectory(
            student, start[None], target[None], images[None], labels[None], alpha.reshape(1),
            steps=steps, batch_size=batch_size, unroll=unroll, seed=seed, augment=augment,
            label_logits=None if label_logits is None else label_logits[None], keep_mib=keep_mib)
        return MatchResult(res.loss[0], res.image_grad[0], res.alpha_grad.reshape(alpha.shape),
                           None if res.label_grad is None else res.label_grad[0])
    if steps < 1:
        raise DistillError(f"trajectory matching needs at least 1 step; got steps={steps}.")
    idx = batch_schedule(images.shape[1], steps, batch_size, seed=seed, device=images.device)
    args = (student, start.detach(), target.detach(), images.detach(), labels,
            alpha.detach(), None if label_logits is None else label_logits.detach(),
            idx, steps, seed, augment)
    if unroll not in ("full", "two_pass"):
        raise DistillError(f"unroll mode {unroll!r} is unknown; expected 'full' or 'two_pass'.")
    with engine_heap() if images.device.type == "cpu" else contextlib.nullcontext():
        if unroll == "full":
            return _full(*args)
        return _two_pass(*args, keep_bytes=int(keep_mib * 2**20))


def _normalised_distance(theta: Tensor, start: Tensor, target: Tensor) -> Tensor:
    return (theta - target).pow(2).sum(-1) / (start - target).pow(2).sum(-1)


def _full(student, start, target, images, labels, alpha, label_logits, idx, steps, seed, augment):
    images = images.requires_grad_(True)
    alpha = alpha.requires_grad_(True)
    leaves = [images, alpha]
    if label_logits is not None:
        leaves.append(label_logits.requires_grad_(True))
    theta = start.requires_grad_(True)
    for i in range(steps):
        loss = _step_loss(student, theta, images, labels, label_logits,
                          None if idx is None else idx[i], derive_seed(seed, "step", i), augment)
        (g,) = torch.autograd.grad(loss.sum(), theta, create_graph=True)
        theta = theta - alpha[:, None] * g
    match = _normalised_distance(theta, start, target)
    grads = torch.autograd.grad(match.sum(), leaves)
    return MatchResult(match.detach(), grads[0], grads[1],
                       grads[2] if label_logits is not None else None)


@contextlib.contextmanager
def _count_saved(total: list[int]):
    """Add to ``total[0]`` the bytes of the distinct storages autograd saves inside the block."""
    seen: set[int] = set()

    def pack(t: Tensor) -> Tensor:
        try:
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a wrapper tensor (vmap): count its elements
            key, size = id(t), t.numel() * t.element_size()
        if key not in seen:
            seen.add(key)
            total[0] += size
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def _two_pass(student, start, target, images, labels, alpha, label_logits, idx, steps, seed,
              augment, *, keep_bytes):
    images = images.requires_grad_(True)
    leaves = [images]
    if label_logits is not None:
        leaves.append(label_logits.requires_grad_(True))

    def step_grad(i: int, theta_i: Tensor, graph: bool) -> Tensor:
        """Step ``i``'s weight gradient; with ``graph``, differentiable wrt the leaves."""
        x, logits = (images, label_logits) if graph else (
            images.detach(), None if label_logits is None else label_logits.detach())
        loss = _step_loss(student, theta_i, x, labels, logits, None if idx is None else idx[i],
                          derive_seed(seed, "step", i), augment)
        return torch.autograd.grad(loss.sum(), theta_i, create_graph=graph)[0]

    # pass 1: the plain unroll, keeping each step's weights (P, D), and the first steps' graphs
    # while they fit the budget (every step's graph weighs the same: the shapes repeat)
    thetas, kept = [], []
    kept_bytes, step_bytes = 0, 0
    theta = start
    g_sum = torch.zeros_like(start)
    for i in range(steps):
        thetas.append(theta)
        theta_i = theta.detach().requires_grad_(True)
        if kept_bytes + step_bytes < keep_bytes:
            saved = [0]
            with _count_saved(saved):
                g = step_grad(i, theta_i, graph=True)
            step_bytes = saved[0]
            if kept_bytes + step_bytes <= keep_bytes:
                kept.append(g)
                kept_bytes += step_bytes
            g = g.detach()
        else:
            g = step_grad(i, theta_i, graph=False)
        g_sum = g_sum + g
        theta = theta - alpha[:, None] * g
    denom = (start - target).pow(2).sum(-1, keepdim=True)
    match = (theta - target).pow(2).sum(-1) / denom[:, 0]
    v = 2.0 * (theta - target) / denom  # dL/dtheta_N, (P, D)
    alpha_grad = -(v * g_sum).sum(-1)
    # pass 2: each step's share of dL, through that step's gradient only (kept or recomputed)
    pull = -alpha[:, None] * v
    for i in range(steps):
        if i < len(kept):
            g, kept[i] = kept[i], None
        else:
            g = step_grad(i, thetas[i].requires_grad_(True), graph=True)
        torch.autograd.backward((g * pull).sum(), inputs=leaves)
    return MatchResult(match.detach(), images.grad, alpha_grad,
                       None if label_logits is None else label_logits.grad)
