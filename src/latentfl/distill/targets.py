"""What a distillation run matches: fixed (start, target) pairs, or a pair drawn each iteration.

A *targets* object tells :func:`~latentfl.distill.synthesize.distill` which participants share
one batched graph (:class:`Batch`: the same class list) and where their trajectories start and
should land, as flat weights ``(P, D)`` in the model registry's order:

* :class:`FixedTargets`: one fixed pair per participant (FedDGM: the surrogate the server sent
  and the weights participant ``p`` returned), optionally a class list per participant.
* :class:`SampledTargets`: a pair drawn afresh every iteration by
  ``sample(iteration, generator)`` (DynaFed: a start snapshot of the global trajectory and the
  mean of a few later ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from latentfl.errors import DistillError

__all__ = ["Batch", "Draw", "FixedTargets", "SampledTargets", "Targets"]

#: ``(iteration, generator) -> (starts, targets)``, each ``(P, D)``.
Draw = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Batch:
    """Participants distilled in one graph: their indices, their classes (None: all), the pairs."""

    members: tuple[int, ...]
    classes: tuple[int, ...] | None
    draw: Draw


class Targets(Protocol):
    """Where each participant's trajectory starts and should land, in batches."""

    def batches(self, device: torch.device) -> list[Batch]:
        """The batches, their pairs on ``device``; every participant in exactly one."""
        ...


@dataclass(frozen=True, eq=False)
class FixedTargets:
    """P fixed pairs ``starts``/``targets (P, D)``; ``classes``: one class list per participant
    (default: every class). Participants with the same classes are distilled together."""

    starts: Tensor
    targets: Tensor
    classes: Sequence[Sequence[int]] | None = None

    def __post_init__(self) -> None:
        if self.starts.dim() != 2 or self.starts.shape != self.targets.shape:
            raise DistillError(f"fixed targets need starts and targets of one shape (P, D); got "
                               f"{tuple(self.starts.shape)} and {tuple(self.targets.shape)}.")
        if self.classes is not None and len(self.classes) != self.starts.shape[0]:
            raise DistillError(f"fixed targets need one class list per participant; got "
                               f"{len(self.classes)} lists for {self.starts.shape[0]} participants.")

    def batches(self, device: torch.device) -> list[Batch]:
        starts, targets = self.starts.to(device).float(), self.targets.to(device).float()
        if bool(((starts - targets).pow(2).sum(-1) == 0).any()):  # one host sync, before the loop
            raise DistillError("a start equals its target: there is no trajectory to match.")
        groups: dict[tuple[int, ...] | None, list[int]] = {}
        for p in range(starts.shape[0]):
            cls = None if self.classes is None else tuple(int(c) for c in self.classes[p])
            groups.setdefault(cls, []).append(p)
        return [Batch(tuple(members), cls, _constant(starts, targets, members))
                for cls, members in groups.items()]


@dataclass(frozen=True)
class SampledTargets:
    """A pair drawn every iteration: ``sample(iteration, generator) -> (starts, targets)``, each
    ``(participants, D)``; every participant holds ``classes`` (default: every class)."""

    sample: Draw
    participants: int = 1
    classes: Sequence[int] | None = None

    def batches(self, device: torch.device) -> list[Batch]:
        def draw(iteration: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            starts, targets = self.sample(iteration, generator)
            if (starts.dim() != 2 or starts.shape != targets.shape
                    or starts.shape[0] != self.participants):
                raise DistillError(
                    f"sample returned starts {tuple(starts.shape)} and targets "
                    f"{tuple(targets.shape)}; expected both ({self.participants}, D).")
            return starts.to(device).float(), targets.to(device).float()

        classes = None if self.classes is None else tuple(int(c) for c in self.classes)
        return [Batch(tuple(range(self.participants)), classes, draw)]


def _constant(starts: Tensor, targets: Tensor, members: list[int]) -> Draw:
    idx = torch.tensor(members, device=starts.device)
    pair = (starts[idx], targets[idx])
    return lambda iteration, generator: pair
