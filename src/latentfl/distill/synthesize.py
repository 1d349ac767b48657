"""The outer distillation loop: synthetic sets whose training trajectory matches given weights.

:func:`distill` distils one synthetic set per participant, the participants of a
:class:`~latentfl.distill.targets.Batch` in one batched graph (a leading participant dimension
through the student, the augmentation and the generator). What is matched comes from a targets
object: fixed pairs (FedDGM) or a pair drawn each iteration (DynaFed), see
:mod:`latentfl.distill.targets`; what is synthesised is a :class:`SetSpec`.

The loop has no host sync per iteration: losses stay on the device until the end, the step size
alpha is clamped on the device; only the log line every ``log_every`` iterations reads values.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
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
from latentfl.distill.matching import DEFAULT_KEEP_MIB, match_trajectory
from latentfl.distill.priors import load_prior, prior_problem
from latentfl.distill.targets import Batch, Targets
from latentfl.errors import DistillError
from latentfl.log import get_logger
from latentfl.seeding import derive_seed

__all__ = ["DistillConfig", "SetSpec", "Space", "SyntheticSet", "build_space", "distill",
           "to_uint8"]

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
    alpha_lr: float = option(1e-5, help="Learning rate of the step size.", min=0.0)
    alpha_min: float = option(1e-6, help="Floor the step size is clamped to after each update.",
                              min=0.0, min_exclusive=True)
    alpha_optimizer: Literal["sgd", "adam"] = option(
        "sgd", help="Optimiser of the step size: SGD with momentum 0.5, or Adam.")
    optimizer: Literal["sgd", "adam"] = option("sgd", help="Optimiser of latents/images/labels.")
    momentum: float = option(0.5, help="SGD momentum of the latent optimiser.", min=0.0, max=1.0)
    lr_feature: float = option(1000.0, help="Learning rate of F-space feature maps.", min=0.0)
    lr_style: float = option(1.0, help="Learning rate of F-space style codes.", min=0.0)
    lr_pixel: float = option(1000.0, help="Learning rate of images in pixel space.", min=0.0)
    lr_labels: float = option(10.0, help="Learning rate of soft-label logits.", min=0.0)
    unroll: Literal["full", "two_pass"] = option(
        "full", help="'full' exact unroll or bounded-memory 'two_pass' (see two_pass_keep_mib).")
    two_pass_keep_mib: float = option(
        DEFAULT_KEEP_MIB, help="two_pass: MiB of step graphs the first pass keeps for the second "
        "instead of recomputing them (0: recompute every step; memory is one step's graph).",
        min=0.0)
    augment: bool = option(True, help="Differentiable augmentation (DSA) in every student step.")
    augment_strategy: Literal["one", "all"] = option(
        "one", help="DSA: one random family per step, or all families.")
    soft_labels: bool = option(False, help="Learn soft labels (logits) with the images.")
    label_init: Literal["hard", "uniform"] = option(
        "hard", help="Initial soft labels: probability 0.9 on the hard label, or uniform.")
    prior: Literal["random", "trained", "pixel"] = option(
        "random", help="Image prior: random-init generator, trained generator, or pixel space.")
    generator_path: Path | None = option(
        None, help="The trained prior (prior 'trained'): 'builtin:cifar10-public' (shipped, "
                   "trained on public CIFAR-10 images), 'entrypoint:NAME' (a 'latentfl.generators' "
                   "entry point), or weights (.safetensors) from 'latentfl generator train'.")
    layer: int | None = option(None, help="F-space split layer; chosen from the image size if unset.",
                               min=0)
    chunk_size: int = option(256, help="Up to this many images keep the generator's graph for the "
                            "backward; more are replayed in chunks of this size.", min=1)
    log_every: int = option(10, help="Log loss and alpha every this many iterations (0: never).",
                            min=0)

    def problems(self) -> list[str]:
        if self.prior == "trained" and self.generator_path is None:
            return ["prior = 'trained' needs generator_path ('builtin:cifar10-public', "
                    "'entrypoint:NAME' or weights from 'latentfl generator train')."]
        problem = self.generator_path is not None and prior_problem(self.generator_path)
        return [problem] if problem else []


@dataclass(frozen=True)
class SetSpec:
    """What each participant's set holds: ``ipc`` images of each of its classes, labels in
    ``0 .. num_classes - 1`` (which classes a participant holds comes with the targets)."""

    num_classes: int
    ipc: int


@dataclass(frozen=True)
class SyntheticSet:
    """A distilled set: normalised float images on the CPU, hard labels, optional soft-label
    logits, the learnt step size and the matching loss of every iteration."""

    images: Tensor
    labels: Tensor
    label_logits: Tensor | None
    alpha: float
    losses: tuple[float, ...]

    @property
    def soft_labels(self) -> Tensor | None:
        """Label distributions ``(M, K)``, or None with hard labels."""
        return None if self.label_logits is None else torch.softmax(self.label_logits, -1)


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
        gen = random_generator(GeneratorConfig(num_classes=num_classes, image_size=h,
                                               image_width=w, channels=c),
                               seed=seed, mean=mean, std=std)
    else:
        if config.generator_path is None:
            raise DistillError("prior 'trained' needs generator_path; got none.")
        gen = load_prior(config.generator_path, mean=mean, std=std)
        shape = tuple(gen.image_shape)
        # a label-free prior ignores labels, so it serves any number of classes
        conditional = getattr(gen, "conditional", True)
        if shape != tuple(image_shape) or (conditional and gen.num_classes != num_classes):
            raise DistillError(
                f"generator {config.generator_path} makes {shape} images of "
                f"{gen.num_classes} classes; expected {tuple(image_shape)} and {num_classes}.")
    return GeneratorSpace(gen.to(device), layer=config.layer, chunk_size=config.chunk_size)


def distill(targets: Targets, model: nn.Module, *, spec: SetSpec, space: Space,
            config: DistillConfig, device: torch.device | str = "cpu",
            seed: int = 0) -> list[SyntheticSet]:
    """Distil one synthetic set per participant of ``targets``, in participant order.

    Participant ``p`` initialises its latents from ``derive_seed(seed, "latents", p)``; pairs are
    drawn from a generator seeded ``derive_seed(seed, "pairs")`` and iteration ``i`` augments and
    batches from ``derive_seed(seed, "iteration", i)``, so the same seed gives the same numbers.
    """
    device = torch.device(device)
    sets: dict[int, SyntheticSet] = {}
    for batch in targets.batches(device):
        results = _distill_batch(batch, model, spec=spec, space=space, config=config,
                                 device=device, seed=seed)
        sets.update(zip(batch.members, results, strict=True))
    return [sets[p] for p in sorted(sets)]


def _optimizer(kind: str, groups: list[dict], *, lr: float, momentum: float
               ) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    return torch.optim.Adam(groups, lr=lr)


def _initial_label_logits(labels: Tensor, num_classes: int, init: str) -> Tensor:
    if init == "uniform":
        return torch.zeros(*labels.shape, num_classes, device=labels.device)
    high = math.log(9.0 * max(num_classes - 1, 1))  # probability 0.9 on the hard label
    return F.one_hot(labels, num_classes).float() * high


def _distill_batch(batch: Batch, model: nn.Module, *, spec: SetSpec, space: Space,
                   config: DistillConfig, device: torch.device, seed: int) -> list[SyntheticSet]:
    """The loop for the participants of one batch (they share one class list)."""
    cls = tuple(range(spec.num_classes)) if batch.classes is None else batch.classes
    if not cls or min(cls) < 0 or max(cls) >= spec.num_classes:
        raise DistillError(f"classes {list(cls)} are not valid; expected a non-empty list of "
                           f"labels in 0..{spec.num_classes - 1}.")
    num = len(batch.members)
    labels = torch.tensor(cls, device=device).repeat_interleave(spec.ipc)  # (M,)
    m = labels.shape[0]
    labels_all = labels.expand(num, m)
    inits = [space.init(labels, derive_seed(seed, "latents", p)) for p in batch.members]
    params = [torch.cat([init[t].detach() for init in inits]).requires_grad_(True)
              for t in range(len(inits[0]))]
    groups = space.lr_groups(params, pixel=config.lr_pixel, feature=config.lr_feature,
                             style=config.lr_style)
    label_logits = None
    if config.soft_labels:
        label_logits = _initial_label_logits(labels_all, spec.num_classes, config.label_init)
        label_logits.requires_grad_(True)
        groups.append({"params": [label_logits], "lr": config.lr_labels})
    opt = _optimizer(config.optimizer, groups, lr=config.lr_pixel, momentum=config.momentum)
    alpha = torch.full((num,), config.alpha_init, device=device, requires_grad=True)
    opt_alpha = _optimizer(config.alpha_optimizer, [{"params": [alpha]}], lr=config.alpha_lr,
                           momentum=0.5)
    student = FunctionalStudent(copy.deepcopy(model).to(device).float())
    pair_gen = torch.Generator().manual_seed(derive_seed(seed, "pairs"))
    log = get_logger("latentfl.distill", participants=num)
    losses = []
    for it in range(config.iterations):
        starts, targets = batch.draw(it, pair_gen)  # (P, D) each
        images, pull_back = space.render_for_grad(params)
        images = images.view(num, m, *space.image_shape)
        res = match_trajectory(
            student, starts, targets, images, labels_all, alpha, steps=config.steps,
            batch_size=config.batch_size, unroll=config.unroll,
            seed=derive_seed(seed, "iteration", it),
            augment=config.augment_strategy if config.augment else None,
            label_logits=label_logits, keep_mib=config.two_pass_keep_mib)
        opt.zero_grad(set_to_none=True)
        pull_back(res.image_grad.flatten(0, 1))
        if label_logits is not None:
            label_logits.grad = res.label_grad
        alpha.grad = res.alpha_grad
        opt.step()
        opt_alpha.step()
        with torch.no_grad():
            alpha.clamp_(min=config.alpha_min)  # a negative step would train away from the data
        losses.append(res.loss)
        if config.log_every and (it % config.log_every == 0 or it == config.iterations - 1):
            log.info("distill_iteration", iteration=it, loss=res.loss.tolist(),
                     alpha=alpha.detach().tolist())
    images = space.render(params).view(num, m, *space.image_shape).float().cpu()
    loss_table = torch.stack(losses, 1).cpu().tolist() if losses else [[]] * num
    logits = None if label_logits is None else label_logits.detach().cpu()
    alphas = alpha.detach().cpu().tolist()
    return [SyntheticSet(images[p], labels.cpu(), None if logits is None else logits[p],
                         float(alphas[p]), tuple(loss_table[p])) for p in range(num)]
