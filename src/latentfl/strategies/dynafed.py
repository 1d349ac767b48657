"""DynaFed (Pi et al., CVPR 2023): FedAvg whose aggregates are fine-tuned on a pseudo dataset.

The server keeps the first ``trajectory_length`` global models (the random initialisation
counted) as a trajectory of flat parameter vectors. When it is complete, the server synthesises
once a small pseudo dataset (``ipc`` images per class, learnable soft labels) by trajectory
matching over it (:func:`latentfl.distill.distill`, pixel space, a pair drawn each iteration by
:func:`sample_pair`): a few SGD steps on the pseudo set from snapshot ``s`` should land on the
average of 2 or 3 of the next ``target_span`` snapshots. From then on every round's aggregate is fine-tuned on the pseudo set
before it is sent out.

The method needs only the aggregate: :meth:`DynaFed.post_aggregate` takes the averaged weights
and nothing else, so the same code runs when the average comes from encrypted aggregation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from latentfl.config import option
from latentfl.device import resolve_device
from latentfl.distill import (
    DistillConfig,
    FunctionalStudent,
    PixelSpace,
    SampledTargets,
    SetSpec,
    augment,
    distill,
)
from latentfl.log import get_logger
from latentfl.models import flatten_named, load_tensors_, param_shapes, state_to_tensors
from latentfl.seeding import derive_seed
from latentfl.strategies.base import ModelSpec, Tensors, Update
from latentfl.strategies.defence import RobustConfig
from latentfl.strategies.fedavg import FedAvg
from latentfl.training import TrainConfig

#: Floor of the learnt inner step size.
MIN_STEP_SIZE = 1e-6


@dataclass(frozen=True)
class DynaFedConfig:
    """DynaFed's server-side settings (the paper's defaults)."""

    trajectory_length: int = option(
        25, help="Global snapshots (random init counted) taken before synthesis.", min=2
    )
    ipc: int = option(15, help="Pseudo images per class.", min=1)
    target_span: int = option(
        3,
        help="M: the target averages 2 or 3 snapshots drawn from the next M after the start.",
        min=1,
    )
    syn_steps: int = option(20, help="N: unrolled SGD steps per matching iteration.", min=1)
    iterations: int = option(3000, help="Trajectory-matching iterations (done once).", min=1)
    batch_size: int = option(0, help="Pseudo images per unrolled step (0 = all of them).", min=0)
    unroll: Literal["full", "two_pass"] = option("full", help="Unroll mode of the matching.")
    lr_images: float = option(0.05, help="Adam learning rate of the pseudo images.", min=0.0)
    lr_labels: float = option(0.01, help="Adam learning rate of the soft-label logits.", min=0.0)
    label_init: Literal["hard", "uniform"] = option(
        "hard",
        help="Initial soft labels: 0.9 on each pseudo image's class (ipc per class), or uniform.",
    )
    lr_step_size: float = option(1e-5, help="Adam learning rate of the learnt step size.", min=0.0)
    initial_step_size: float = option(
        0.04, help="Initial inner SGD step size.", min=0.0, min_exclusive=True
    )
    augment: bool = option(True, help="Differentiable augmentation (DSA) during synthesis.")
    finetune_steps: int = option(
        20, help="Server fine-tuning steps per round on the pseudo set.", min=0
    )
    finetune_lr: float = option(1e-4, help="Adam learning rate of server fine-tuning.", min=0.0)
    finetune_batch_size: int = option(
        0, help="Pseudo images per fine-tuning step (0 = all of them).", min=0
    )
    finetune_augment: bool = option(True, help="Augment pseudo images during fine-tuning.")
    device: str = option("auto", help="Device of synthesis and fine-tuning: auto, cpu, cuda[:N].")


@dataclass
class PseudoSet:
    """The synthesised data: images ``(K*ipc, C, H, W)`` (normalised), soft-label logits
    ``(K*ipc, K)`` and the learnt step size (a 0-d tensor)."""

    images: torch.Tensor
    label_logits: torch.Tensor
    step_size: torch.Tensor

    @property
    def soft_labels(self) -> torch.Tensor:
        return torch.softmax(self.label_logits, dim=-1)


def sample_pair(
    trajectory: torch.Tensor, span: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A start snapshot ``s`` and the mean of 2 or 3 snapshots drawn from ``s+1 .. s+span``.

    ``trajectory`` is ``(L, D)``; the span shrinks to ``L - 1`` for very short trajectories.
    """
    span = min(span, trajectory.shape[0] - 1)
    s = int(torch.randint(0, trajectory.shape[0] - span, (1,), generator=generator))
    k = min(span, int(torch.randint(2, 4, (1,), generator=generator)))
    chosen = s + 1 + torch.randperm(span, generator=generator)[:k]
    return trajectory[s], trajectory[chosen].mean(0)


def synthesize_pseudo_set(
    trajectory: torch.Tensor,
    model: nn.Module,
    config: DynaFedConfig,
    *,
    num_classes: int,
    image_shape: tuple[int, ...],
    seed: int,
    device: torch.device,
) -> tuple[PseudoSet, torch.Tensor]:
    """Learn the pseudo set whose training mimics ``trajectory (L, D)``; also return the
    per-iteration matching losses ``(iterations,)``."""
    trajectory = trajectory.to(device)

    def draw(iteration: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        start, target = sample_pair(trajectory, config.target_span, generator)
        return start[None], target[None]

    # the server has no data: images start as noise in normalised space
    (synthetic,) = distill(
        SampledTargets(draw),
        model,
        spec=SetSpec(num_classes=num_classes, ipc=config.ipc),
        space=PixelSpace(tuple(image_shape)),
        config=_distill_config(config),
        device=device,
        seed=seed,
    )
    pseudo = PseudoSet(
        synthetic.images.to(device),
        synthetic.label_logits.to(device),
        torch.tensor(synthetic.alpha, device=device),
    )
    return pseudo, torch.tensor(synthetic.losses)


def _distill_config(config: DynaFedConfig) -> DistillConfig:
    """The engine's settings for DynaFed: pixels, learnt soft labels, Adam throughout."""
    return DistillConfig(
        iterations=config.iterations,
        steps=config.syn_steps,
        batch_size=config.batch_size or None,
        unroll=config.unroll,
        augment=config.augment,
        prior="pixel",
        optimizer="adam",
        lr_pixel=config.lr_images,
        soft_labels=True,
        label_init=config.label_init,
        lr_labels=config.lr_labels,
        alpha_init=config.initial_step_size,
        alpha_optimizer="adam",
        alpha_lr=config.lr_step_size,
        alpha_min=MIN_STEP_SIZE,
        log_every=0,
    )


def finetune(model: nn.Module, pseudo: PseudoSet, config: DynaFedConfig, *, seed: int) -> float:
    """Train ``model`` in place on the pseudo set with its soft labels; return the last loss."""
    device = pseudo.images.device
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=config.finetune_lr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    soft = pseudo.soft_labels
    n = pseudo.images.shape[0]
    batch = config.finetune_batch_size or n
    loss = torch.zeros((), device=device)
    for i in range(config.finetune_steps):
        idx = torch.randperm(n, generator=gen)[:batch].to(device)
        x = pseudo.images[idx]
        if config.finetune_augment:
            x = augment(x, derive_seed(seed, "finetune", i))
        out = model(x)
        loss = -(soft[idx] * F.log_softmax(out, dim=-1)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


class DynaFed(FedAvg):
    """FedAvg rounds; the aggregate goes through :meth:`post_aggregate` before it is sent out."""

    name = "dynafed"

    def __init__(
        self, model: ModelSpec, local: TrainConfig, *, config: DynaFedConfig, weighted: bool = True,
        robust: RobustConfig | None = None,
    ) -> None:
        super().__init__(model, local, weighted=weighted, robust=robust)
        self.config = config
        self.trajectory: list[torch.Tensor] = []
        self.pseudo: PseudoSet | None = None
        self._seed = 0
        self._tuner: nn.Module | None = None

    def initialize(self, seed: int) -> None:
        super().initialize(seed)
        # synthesis needs a pure-function student (no BatchNorm): refuse now, not at round 24
        FunctionalStudent(self._reference_model())
        self._seed = seed
        self.trajectory = [flatten_named(self._global, param_shapes(self._reference_model()))]
        self.pseudo = None

    def aggregate_round(self, round: int, updates: Sequence[Update]) -> dict[str, float]:
        metrics = super().aggregate_round(round, updates)
        weights, extra = self.post_aggregate(round, self.global_weights())
        self.set_global_weights(weights)
        return {**metrics, **extra}

    def accept_aggregate(self, round: int, weights: Tensors, num_examples: int, *,
                         steps: Sequence[tuple[int, int]] = ()) -> dict[str, float]:
        metrics = super().accept_aggregate(round, weights, num_examples, steps=steps)
        tuned, extra = self.post_aggregate(round, self.global_weights())
        self.set_global_weights(tuned)
        return {**metrics, **extra}

    def post_aggregate(self, round: int, aggregate: Tensors) -> tuple[Tensors, dict[str, float]]:
        """Snapshot (until the trajectory is complete), synthesise once, fine-tune the aggregate.

        ``aggregate`` is only read; the returned tensors are new.
        """
        metrics: dict[str, float] = {}
        if self.pseudo is None:
            self.trajectory.append(flatten_named(aggregate, param_shapes(self._reference_model())))
            if len(self.trajectory) >= self.config.trajectory_length:
                metrics.update(self._synthesize())
        if self.pseudo is None or self.config.finetune_steps == 0:
            return {k: v.detach().clone() for k, v in aggregate.items()}, metrics
        model = self._tuning_model()
        load_tensors_(model, aggregate)
        metrics["finetune_loss"] = finetune(
            model, self.pseudo, self.config, seed=derive_seed(self._seed, "finetune", round)
        )
        return state_to_tensors(model), metrics

    def _synthesize(self) -> dict[str, float]:
        started = time.perf_counter()
        device = resolve_device(self.config.device)
        spec = self.model_spec
        self.pseudo, losses = synthesize_pseudo_set(
            torch.stack(self.trajectory),
            spec.build(),
            self.config,
            num_classes=spec.num_classes,
            image_shape=tuple(spec.in_shape),
            seed=self._seed,
            device=device,
        )
        tenth = max(1, len(losses) // 10)
        metrics = {
            "distill_loss_first": float(losses[:tenth].mean()),
            "distill_loss_last": float(losses[-tenth:].mean()),
            "distill_seconds": time.perf_counter() - started,
            "distill_step_size": float(self.pseudo.step_size),
            # how much class information the soft labels carry (1/K when uniform)
            "pseudo_label_confidence": float(self.pseudo.soft_labels.max(-1).values.mean()),
        }
        get_logger("dynafed").info(
            "pseudo_set_synthesised",
            snapshots=len(self.trajectory),
            images=int(self.pseudo.images.shape[0]),
            **metrics,
        )
        return metrics

    def _reference_model(self) -> nn.Module:
        if self._model is None:
            self._model = self.model_spec.build()
        return self._model

    def _tuning_model(self) -> nn.Module:
        if self._tuner is None:
            self._tuner = self.model_spec.build()
        return self._tuner

    def state_dict(self) -> tuple[Tensors, dict[str, Any]]:
        tensors, meta = super().state_dict()
        if self.trajectory:
            tensors["trajectory"] = torch.stack(self.trajectory)
        if self.pseudo is not None:
            tensors["pseudo.images"] = self.pseudo.images.cpu()
            tensors["pseudo.label_logits"] = self.pseudo.label_logits.cpu()
            tensors["pseudo.step_size"] = self.pseudo.step_size.cpu().reshape(1)
        meta.update(
            seed=self._seed, snapshots=len(self.trajectory), synthesised=self.pseudo is not None
        )
        return tensors, meta

    def load_state_dict(self, tensors: Tensors, meta: dict[str, Any]) -> None:
        super().load_state_dict(tensors, meta)
        self._seed = int(meta.get("seed", 0))
        trajectory = tensors.get("trajectory")
        self.trajectory = [] if trajectory is None else [t.clone() for t in trajectory]
        self.pseudo = None
        if "pseudo.images" in tensors:
            device = resolve_device(self.config.device)
            self.pseudo = PseudoSet(
                tensors["pseudo.images"].to(device),
                tensors["pseudo.label_logits"].to(device),
                tensors["pseudo.step_size"].reshape(()).to(device),
            )


__all__ = [
    "DynaFed",
    "DynaFedConfig",
    "PseudoSet",
    "finetune",
    "sample_pair",
    "synthesize_pseudo_set",
]
