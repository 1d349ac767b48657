"""The narrow port between a federated method and whatever runs it.

A :class:`Strategy` owns one method's server-side state. The coordinator daemon and the
in-process simulator both drive it the same way, round after round::

    strategy.initialize(seed)
    tasks = strategy.configure_round(r, participant_ids)   # what each participant gets
    ... participants train (latentfl.strategies.local.run_task) and return Updates ...
    metrics = strategy.aggregate_round(r, updates)          # updates become the next state

It never sees sockets, files or clocks: the runner owns networking, time and persistence, and
checkpoints the strategy through ``state_dict`` / ``load_state_dict`` (whose tensor names are each
method's private business). What a runner may ask of any method beyond the round loop:

- ``needs_only_aggregates`` (a class attribute): the method can run on the weighted mean alone
  (``accept_aggregate``), so the runner may aggregate under encryption;
- ``evaluation_spec()``: the architecture of ``evaluation_model()``, so that the global model
  can be exported without knowing the method.

What only some methods do (synthetic sets, a distiller, fixed evaluation input statistics) is not
part of this port: :mod:`latentfl.strategies.capabilities` names each as a small protocol that a
runner checks for with ``isinstance``. This module imports nothing method-specific.

``Task`` and ``Update`` are typed: a task says how its update will be aggregated
(:class:`Aggregation`), an update may carry the participant's class counts.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from latentfl.config import option, to_dict
from latentfl.errors import ConfigError
from latentfl.models import ModelManifest, build_model, model_manifest
from latentfl.privacy.modes import Aggregation
from latentfl.seeding import derive_seed
from latentfl.training import TrainConfig

Tensors = dict[str, torch.Tensor]
#: ``pretrain(model, seed)``: set a freshly built model's initial weights in place (a start
#: trained on public data).
Pretrain = Callable[[nn.Module, int], None]


_MANIFESTS: dict[str, ModelManifest] = {}  # ModelSpec.manifest's, by spec
_MANIFESTS_KEPT = 16


@dataclass(frozen=True)
class ModelSpec:
    """An architecture from the model registry, with its input and output sizes."""

    name: str = option(
        "convnet", help="Registry name of the architecture (convnet, resnet18, ...)."
    )
    num_classes: int = option(10, help="Number of classes the model predicts.", min=2)
    in_shape: tuple[int, ...] = option(
        (3, 32, 32), help="Input shape as [channels, height, width]."
    )
    options: dict[str, Any] = option(
        {}, help="Architecture options passed to build_model (e.g. width, depth, norm)."
    )

    def build(self) -> nn.Module:
        return build_model(self.name, self.num_classes, tuple(self.in_shape), **self.options)

    def manifest(self) -> ModelManifest:
        """The manifest of the model :meth:`build` makes, built once per distinct spec: an
        agent checks the same spec with every TASK, and building the model cost more than
        the rest of decoding one."""
        key = json.dumps(to_dict(self), sort_keys=True)
        manifest = _MANIFESTS.get(key)
        if manifest is None:
            if len(_MANIFESTS) >= _MANIFESTS_KEPT:  # bounded, whatever specs a peer sends
                _MANIFESTS.clear()
            manifest = _MANIFESTS[key] = model_manifest(self.build())
        return manifest

    def problems(self) -> list[str]:
        if len(self.in_shape) != 3 or any(d < 1 for d in self.in_shape):
            return [f"model in_shape {list(self.in_shape)} must be three positive sizes [C, H, W]."]
        return []


@dataclass(frozen=True)
class Task:
    """What one participant is asked to do in one round."""

    round: int
    weights: Tensors
    train: TrainConfig
    aggregation: Aggregation = Aggregation.PLAIN
    #: FedNova: return ``start + (trained - start) / a`` with ``a`` the participant's
    #: momentum-corrected local step count, so a plain weighted mean is FedNova's direction
    normalised_update: bool = False
    #: the method the coordinator runs with the updates (its ``strategy.method``), for the
    #: site's approval policy; None where a coordinator does not say
    method: str | None = None


@dataclass(frozen=True)
class Update:
    """What one participant returned for one round."""

    participant: str
    round: int
    weights: Tensors
    num_examples: int
    num_steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    #: examples per label (index = label), or None when the participant keeps them to itself
    class_counts: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SyntheticImages:
    """A synthetic set derived from one participant, and what is needed to render it."""

    images: torch.Tensor  # (N, C, H, W), normalised with mean/std below
    labels: torch.Tensor  # (N,) int64
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def pixels(self) -> torch.Tensor:
        """The images in [0, 1], (N, C, H, W), as a viewer shows them."""
        m = torch.tensor(self.mean, dtype=self.images.dtype).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=self.images.dtype).view(1, -1, 1, 1)
        return (self.images * s + m).clamp(0, 1)


class Strategy(abc.ABC):
    """One federated method's server side. Subclasses implement the abstract methods."""

    name: str = "strategy"
    #: True when the method can run on the weighted mean of the updates alone
    #: (``accept_aggregate``), so that updates may be aggregated under encryption.
    needs_only_aggregates: ClassVar[bool] = False

    def __init__(self, model: ModelSpec, local: TrainConfig) -> None:
        self.model_spec = model
        self.local = local

    @abc.abstractmethod
    def initialize(self, seed: int) -> None:
        """Create the initial global state, deterministically for ``seed``."""

    @abc.abstractmethod
    def configure_round(self, round: int, participants: Sequence[str]) -> dict[str, Task]:
        """The task each selected participant receives in ``round``."""

    @abc.abstractmethod
    def aggregate_round(self, round: int, updates: Sequence[Update]) -> dict[str, float]:
        """Turn the round's accepted updates into the next state; return metrics to log."""

    def accept_aggregate(self, round: int, weights: Tensors, num_examples: int, *,
                         steps: Sequence[tuple[int, int]] = ()) -> dict[str, float]:
        """Take the round's weighted mean computed elsewhere (unmasked from a secagg sum,
        whose masked words travelled in the clear or, in ckks mode, under CKKS) as if ``aggregate_round`` had computed it;
        ``num_examples`` is the total it covers and ``steps`` the (examples, local steps)
        each covered participant reported (FedNova needs them).

        Only methods with ``needs_only_aggregates`` implement it (FedAvg, FedProx, FedNova,
        DynaFed); the others refuse, since they need each participant's own update.
        """
        raise ConfigError(
            f"method {self.name!r} cannot run on an aggregate alone (it needs each "
            "participant's update); expected fedavg, fedprox, fednova or dynafed."
        )

    def evaluation_spec(self) -> ModelSpec:
        """The architecture of ``evaluation_model()``: the participants' model unless the
        method trains a global model of its own."""
        return self.model_spec

    @abc.abstractmethod
    def global_weights(self) -> Tensors:
        """The surrogate weights the next round's tasks start from."""

    @abc.abstractmethod
    def evaluation_model(self) -> nn.Module:
        """The model whose test accuracy the runner reports (the global model)."""

    @abc.abstractmethod
    def state_dict(self) -> tuple[Tensors, dict[str, Any]]:
        """Everything needed to resume: tensors (saved as safetensors) and JSON metadata."""

    @abc.abstractmethod
    def load_state_dict(self, tensors: Tensors, meta: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def broadcast_tasks(
    round: int, participants: Sequence[str], weights: Tensors, train: TrainConfig
) -> dict[str, Task]:
    """The same weights and settings for everyone; each participant and round gets its own seed
    (its own data order and augmentation draws), 53 bits wide as the TASK's JSON requires."""
    return {
        pid: Task(
            round=round,
            weights=weights,
            train=replace(train, seed=derive_seed(train.seed, "train", round, pid, bits=53)),
        )
        for pid in sorted(participants)
    }


def select_participants(
    available: Sequence[str], fraction: float, *, seed: int, round: int, minimum: int = 1
) -> list[str]:
    """A deterministic sample of ``fraction`` of ``available`` for ``round`` (sorted ids)."""
    ids = sorted(available)
    if fraction >= 1.0:
        return ids
    k = min(len(ids), max(minimum, int(fraction * len(ids) + 0.5)))
    rng = np.random.default_rng(derive_seed(seed, "select", round))
    chosen = rng.choice(len(ids), size=k, replace=False)
    return sorted(ids[i] for i in chosen)


def tensors_digest(tensors: Tensors) -> str:
    """SHA-256 over names, shapes, dtypes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def check_updates(round: int, updates: Sequence[Update], reference: Tensors) -> None:
    """Refuse an aggregation over no updates or over updates of another round or layout."""
    if not updates:
        raise ConfigError(f"round {round} has no accepted updates to aggregate.")
    for u in updates:
        if u.round != round:
            raise ConfigError(f"update from {u.participant} is for round {u.round}, not {round}.")
        if set(u.weights) != set(reference):
            raise ConfigError(
                f"update from {u.participant} does not have the global model's tensors."
            )


__all__ = [
    "Pretrain",
    "Aggregation",
    "ModelSpec",
    "Strategy",
    "SyntheticImages",
    "Task",
    "Tensors",
    "Update",
    "broadcast_tasks",
    "check_updates",
    "select_participants",
    "tensors_digest",
]
