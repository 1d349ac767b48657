"""The outer distillation loop: synthetic sets whose training trajectory matches given weights.

:func:`distill_many` distils one synthetic set per participant, all participants in one batched
graph (a leading participant dimension through the student, the augmentation and the generator);
:func:`distill` is the one-participant call. The target is either fixed (``start``/``target``) or
drawn each iteration by ``sample_pair(iteration, generator) -> (start, target)`` (DynaFed: a start
taken from a trajectory of snapshots, a target that is a later snapshot or a mean of several).

The loop has no host sync per iteration: losses stay on the device until the end, the step size
alpha is clamped on the device; only the log line every ``log_every`` iterations reads values.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentfl.config import option
from latentfl.distill.functional import FunctionalStudent
from latentfl.distill.generator import GeneratorConfig
from latentfl.distill.latent import GeneratorSpace, PixelSpace, random_generator
from latentfl.distill.matching import match_trajectory
from latentfl.distill.priors import load_prior, prior_problem
from latentfl.errors import DistillError
from latentfl.log import get_logger

__all__ = ["DistillConfig", "SyntheticSet", "build_space", "distill", "distill_many", "to_uint8"]

SamplePair = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]
Space = PixelSpace | GeneratorSpace


@dataclass(frozen=True)
class DistillConfig:
    """Trajectory-matching distillation settings (defaults: FedDGM's reference code)."""

    iterations: int = option(100, help="Outer iterations (latent updates).", min=1)
    steps: int = option(20, help="Unrolled student SGD steps N per iteration.", min=1)
    batch_size: int | None = option(None, help="Synthetic images per student step; all if unset.",
                                    min=1)
    alpha_init: float = option(0.01, help="Initial learnable student step size.", min=0.0,
                               min_exclusive=True)
    alpha_lr: float = option(1e-5, help="Learning rate of the step size (SGD, momentum 0.5).",
                             min=0.0)
    alpha_min: float = option(1e-6, help="Floor the step size is clamped to after each update.",
                              min=0.0, min_exclusive=True)
    optimizer: Literal["sgd", "adam"] = option("sgd", help="Optimiser of latents/images/labels.")
    momentum: float = option(0.5, help="SGD momentum of the latent optimiser.", min=0.0, max=1.0)
    lr_feature: float = option(1000.0, help="Learning rate of F-space feature maps.", min=0.0)
    lr_style: float = option(1.0, help="Learning rate of F-space style codes.", min=0.0)
    lr_pixel: float = option(1000.0, help="Learning rate of images in pixel space.", min=0.0)
    lr_labels: float = option(10.0, help="Learning rate of soft-label logits.", min=0.0)
    unroll: Literal["full", "two_pass"] = option(
        "full", help="'full' exact unroll or constant-memory 'two_pass'.")
    augment: bool = option(True, help="Differentiable augmentation (DSA) in every student step.")
    augment_strategy: Literal["one", "all"] = option(
        "one", help="DSA: one random family per step, or all families.")
    soft_labels: bool = option(False, help="Learn soft labels (logits) with the images.")
    prior: Literal["random", "trained", "pixel"] = option(
        "random", help="Image prior: random-init generator, trained generator, or pixel space.")
    generator_path: Path | None = option(
        None, help="The trained prior (prior 'trained'): 'builtin:cifar10-public' (shipped, "
                   "trained on public CIFAR-10 images), 'entrypoint:NAME' (a 'latentfl.generators' "
                   "entry point), or weights (.safetensors) from 'latentfl generator train'.")
    layer: int | None = option(None, help="F-space split layer; chosen from the image size if unset.",
                               min=0)
    chunk_size: int = option(256, help="Images per chunk when replaying the generator.", min=1)
    log_every: int = option(10, help="Log loss and alpha every this many iterations (0: never).",
                            min=0)

    def problems(self) -> list[str]:
        if self.prior == "trained" and self.generator_path is None:
            return ["prior = 'trained' needs generator_path ('builtin:cifar10-public', "
                    "'entrypoint:NAME' or weights from 'latentfl generator train')."]
        problem = self.generator_path is not None and prior_problem(self.generator_path)
        return [problem] if problem else []


@dataclass(frozen=True)
class SyntheticSet:
    """A distilled set: normalised float images on the CPU, hard labels, optional soft labels."""

    images: Tensor
    labels: Tensor
    soft_labels: Tensor | None
    alpha: float
    losses: tuple[float, ...]


def to_uint8(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised images ``(N, C, H, W)`` as uint8 pixels ``(N, H, W, C)`` (an ImageSet's ``x``)."""
    m = torch.tensor(tuple(mean), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(tuple(std), dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    pixels = ((images * s + m).clamp(0, 1) * 255.0).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def build_space(config: DistillConfig, *, image_shape: tuple[int, int, int], num_classes: int,
                mean: Sequence[float], std: Sequence[float], seed: int,
                device: torch.device | str = "cpu") -> Space:
    """The latent space ``config.prior`` names, on ``device``, rendering with ``mean``/``std``."""
    if config.prior == "pixel":
        return PixelSpace(image_shape)
    mean, std = tuple(mean), tuple(std)
    if config.prior == "random":
        c, h, w = image_shape
        if h != w:
            raise DistillError(f"the built-in generator makes square images; got {h}x{w}.")
        gen = random_generator(GeneratorConfig(num_classes=num_classes, image_size=h, channels=c),
                               seed=seed, mean=mean, std=std)
    else:
        if config.generator_path is None:
            raise DistillError("prior 'trained' needs generator_path; got none.")
        gen = load_prior(config.generator_path, mean=mean, std=std)
        shape = tuple(gen.image_shape)
        if shape != tuple(image_shape) or gen.num_classes != num_classes:
            raise DistillError(
                f"generator {config.generator_path} makes {shape} images of "
                f"{gen.num_classes} classes; expected {tuple(image_shape)} and {num_classes}.")
    return GeneratorSpace(gen.to(device), layer=config.layer, chunk_size=config.chunk_size)


def _initial_label_logits(labels: Tensor, num_classes: int) -> Tensor:
    # logits giving probability 0.9 to the hard label
    high = math.log(9.0 * max(num_classes - 1, 1))
    return F.one_hot(labels, num_classes).float() * high


def distill_many(
    starts: Tensor | None, targets: Tensor | None, model: nn.Module, *, num_classes: int,
    ipc: int, space: Space, config: DistillConfig, device: torch.device | str = "cpu",
    seed: int = 0, classes: Sequence[int] | None = None,
    participant_classes: Sequence[Sequence[int]] | None = None, participants: int | None = None,
    sample_pair: SamplePair | None = None,
) -> list[SyntheticSet]:
    """Distil one synthetic set per participant in one batched loop.

    ``starts``/``targets``: flat weights ``(P, D)`` in the model registry's order. Or pass
    ``sample_pair`` (returning ``(P, D)`` pairs) and ``participants=P`` instead. Participant ``p``
    initialises its latents from ``seed + p``. ``classes`` restricts every participant's labels
    (default all); ``participant_classes`` gives each participant its own classes (e.g. the ones
    present in its data): participants with the same classes are batched together.
    """
    device = torch.device(device)
    if sample_pair is None:
        if starts is None or targets is None or starts.shape != targets.shape or starts.dim() != 2:
            raise DistillError("distill_many needs starts and targets of one shape (P, D), or "
                               "sample_pair; got "
                               f"{None if starts is None else tuple(starts.shape)} and "
                               f"{None if targets is None else tuple(targets.shape)}.")
        starts, targets = starts.to(device).float(), targets.to(device).float()
        if bool(((starts - targets).pow(2).sum(-1) == 0).any()):
            raise DistillError("a start equals its target: there is no trajectory to match.")
        num = starts.shape[0]
    elif participants is None:
        raise DistillError("distill_many with sample_pair needs participants=P; got None.")
    else:
        num = participants
    common = dict(model=model, num_classes=num_classes, ipc=ipc, space=space, config=config,
                  device=device, seed=seed)
    if participant_classes is None:
        cls = tuple(range(num_classes)) if classes is None else tuple(int(c) for c in classes)
        return _distill_batch(starts, targets, cls=cls, seeds=[seed + p for p in range(num)],
                              sample_pair=sample_pair, **common)
    if sample_pair is not None or classes is not None or len(participant_classes) != num:
        raise DistillError(
            f"participant_classes needs fixed starts/targets, no classes, and one class list per "
            f"participant; got {len(participant_classes)} lists for {num} participants.")
    batches: dict[tuple[int, ...], list[int]] = {}
    for p, cls in enumerate(participant_classes):
        batches.setdefault(tuple(int(c) for c in cls), []).append(p)
    results: list[SyntheticSet | None] = [None] * num
    for cls, members in batches.items():
        idx = torch.tensor(members, device=device)
        sets = _distill_batch(starts[idx], targets[idx], cls=cls,
                              seeds=[seed + p for p in members], sample_pair=None, **common)
        for p, synthetic in zip(members, sets, strict=True):
            results[p] = synthetic
    return results


def _distill_batch(
    starts: Tensor | None, targets: Tensor | None, *, model: nn.Module, num_classes: int,
    ipc: int, space: Space, config: DistillConfig, device: torch.device, seed: int,
    cls: tuple[int, ...], seeds: list[int], sample_pair: SamplePair | None,
) -> list[SyntheticSet]:
    """The loop for participants sharing one class list; ``seeds[p]`` seeds p's latents."""
    if not cls or min(cls) < 0 or max(cls) >= num_classes:
        raise DistillError(f"classes {list(cls)} are not valid; expected a non-empty list of "
                           f"labels in 0..{num_classes - 1}.")
    num = len(seeds)
    labels = torch.tensor(cls, device=device).repeat_interleave(ipc)  # (M,)
    m = labels.shape[0]
    labels_all = labels.expand(num, m)
    inits = [space.init(labels, s) for s in seeds]
    params = [torch.cat([init[t].detach() for init in inits]).requires_grad_(True)
              for t in range(len(inits[0]))]
    groups = space.lr_groups(params, pixel=config.lr_pixel, feature=config.lr_feature,
                             style=config.lr_style)
    label_logits = None
    if config.soft_labels:
        label_logits = _initial_label_logits(labels_all, num_classes).requires_grad_(True)
        groups.append({"params": [label_logits], "lr": config.lr_labels})
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=config.lr_pixel, momentum=config.momentum)
    else:
        opt = torch.optim.Adam(groups, lr=config.lr_pixel)
    alpha = torch.full((num,), config.alpha_init, device=device, requires_grad=True)
    opt_alpha = torch.optim.SGD([alpha], lr=config.alpha_lr, momentum=0.5)
    student = FunctionalStudent(copy.deepcopy(model).to(device).float())
    pair_gen = torch.Generator().manual_seed(seed)
    log = get_logger("latentfl.distill", participants=num)
    losses = []
    for it in range(config.iterations):
        if sample_pair is not None:
            s, t = sample_pair(it, pair_gen)
            starts, targets = s.to(device).float(), t.to(device).float()
        images = space.render(params).view(num, m, *space.image_shape)
        res = match_trajectory(
            student, starts, targets, images, labels_all, alpha, steps=config.steps,
            batch_size=config.batch_size, unroll=config.unroll, seed=seed * 100_003 + it,
            augment=config.augment_strategy if config.augment else None,
            label_logits=label_logits)
        opt.zero_grad(set_to_none=True)
        space.backward(params, res.image_grad.flatten(0, 1))
        if label_logits is not None:
            label_logits.grad = res.label_grad
        alpha.grad = res.alpha_grad
        opt.step()
        opt_alpha.step()
        with torch.no_grad():
            alpha.clamp_(min=config.alpha_min)
        losses.append(res.loss)
        if config.log_every and (it % config.log_every == 0 or it == config.iterations - 1):
            log.info("distill_iteration", iteration=it, loss=res.loss.tolist(),
                     alpha=alpha.detach().tolist())
    images = space.render(params).view(num, m, *space.image_shape).float().cpu()
    loss_table = torch.stack(losses, 1).cpu().tolist() if losses else [[]] * num
    soft = None if label_logits is None else torch.softmax(label_logits.detach(), -1).cpu()
    alphas = alpha.detach().cpu().tolist()
    return [SyntheticSet(images[p], labels.cpu(), None if soft is None else soft[p],
                         float(alphas[p]), tuple(loss_table[p])) for p in range(num)]


def distill(
    start: Tensor | None, target: Tensor | None, model: nn.Module, *, num_classes: int, ipc: int,
    space: Space, config: DistillConfig, device: torch.device | str = "cpu", seed: int = 0,
    classes: Sequence[int] | None = None, sample_pair: SamplePair | None = None,
) -> SyntheticSet:
    """Distil one synthetic set whose training from ``start`` lands on ``target`` (flat ``(D,)``).

    With ``sample_pair(iteration, generator) -> (start, target)`` (each ``(D,)``) instead, the
    pair is drawn afresh every iteration.
    """
    pair = None
    if sample_pair is not None:
        def pair(it: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
            s, t = sample_pair(it, gen)
            return s[None], t[None]
    return distill_many(
        None if start is None else start[None], None if target is None else target[None], model,
        num_classes=num_classes, ipc=ipc, space=space, config=config, device=device, seed=seed,
        classes=classes, participants=1, sample_pair=pair)[0]
