"""The parameter-averaging family: FedAvg, FedProx and FedNova.

All three keep one global surrogate and average what participants send back; they differ in
what the task asks for (FedProx adds a proximal term to local training) and in how updates are
weighted (FedNova normalises each update by its number of local steps before averaging).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from latentfl.errors import ConfigError
from latentfl.models import load_tensors_, state_to_tensors
from latentfl.strategies.base import (
    ModelSpec,
    Pretrain,
    Strategy,
    Task,
    Tensors,
    Update,
    broadcast_tasks,
    check_updates,
)
from latentfl.strategies.defence import RobustConfig, robust_combine
from latentfl.strategies.robust import SetAside
from latentfl.training import TrainConfig


def weighted_mean(tensors: Sequence[Tensors], weights: Sequence[float]) -> Tensors:
    """Sum of ``w_i * t_i`` with weights renormalised to sum to one (float64 accumulation)."""
    total = float(sum(weights))
    out: Tensors = {}
    for name in tensors[0]:
        acc = torch.zeros_like(tensors[0][name], dtype=torch.float64)
        for t, w in zip(tensors, weights, strict=True):
            acc += t[name].to(torch.float64) * (w / total)
        out[name] = acc.to(tensors[0][name].dtype)
    return out


class FedAvg(Strategy):
    """McMahan et al. (2017): the mean of returned weights, weighted by examples by default.

    With a robust rule (``robust``) the mean is replaced by that rule over the updates' changes
    and claimed example counts are ignored (:mod:`latentfl.strategies.defence`).
    """

    name = "fedavg"
    needs_only_aggregates = True

    def __init__(self, model: ModelSpec, local: TrainConfig, *, weighted: bool = True,
                 robust: RobustConfig | None = None,
                 initial: Pretrain | None = None) -> None:
        super().__init__(model, local)
        self.weighted = weighted
        self.robust = robust or RobustConfig()
        #: sets the freshly built model's weights (a start pretrained on public data); None
        #: keeps the random initialisation
        self.initial = initial
        self._model: nn.Module | None = None
        self._global: Tensors = {}
        self._set_aside: tuple[SetAside, ...] = ()

    def initialize(self, seed: int) -> None:
        torch.manual_seed(seed)
        self._model = self.model_spec.build()
        if self.initial is not None:
            self.initial(self._model, seed)
        self._global = state_to_tensors(self._model)

    def local_config(self, round: int) -> TrainConfig:
        """Local training settings for ``round`` (method-specific fields included); a fixed
        norm bound is also asked of honest participants, which clip before any masking."""
        if self.robust.rule == "norm_bound" and self.robust.clip_norm > 0:
            return replace(self.local, max_update_norm=self.robust.clip_norm)
        return self.local

    def configure_round(self, round: int, participants: Sequence[str]) -> dict[str, Task]:
        return broadcast_tasks(round, participants, self._global, self.local_config(round))

    def aggregate_round(self, round: int, updates: Sequence[Update]) -> dict[str, float]:
        check_updates(round, updates, self._global)
        counts = self.weighted and not self.robust.enabled  # a robust rule ignores claims
        weights = [u.num_examples if counts else 1.0 for u in updates]
        self._global = self.combine(updates, weights)
        return {
            "participants": float(len(updates)),
            "examples": float(sum(u.num_examples for u in updates)),
        }

    def combine(self, updates: Sequence[Update], weights: Sequence[float]) -> Tensors:
        return self.mean_of(updates, weights)

    def mean_of(self, updates: Sequence[Update], weights: Sequence[float]) -> Tensors:
        """The weighted mean of the uploads, or the robust rule's aggregate of them (which
        also records what it set aside, for :meth:`set_aside`)."""
        if not self.robust.enabled:
            self._set_aside = ()
            return weighted_mean([u.weights for u in updates], weights)
        combined, self._set_aside = robust_combine(self.robust, self._global, updates)
        return combined

    def set_aside(self) -> tuple[SetAside, ...]:
        return self._set_aside

    def accept_aggregate(self, round: int, weights: Tensors, num_examples: int, *,
                         steps: Sequence[tuple[int, int]] = ()) -> dict[str, float]:
        self._set_aside = ()
        if set(weights) != set(self._global):
            raise ConfigError(
                f"aggregate for round {round} does not have the global model's tensors."
            )
        self.set_global_weights(self.step_from_mean(weights, steps))
        return {"examples": float(num_examples)}

    def step_from_mean(self, mean: Tensors, steps: Sequence[tuple[int, int]]) -> Tensors:
        """The next global model from the round's weighted mean of uploads (FedAvg: itself)."""
        return mean

    def global_weights(self) -> Tensors:
        return self._global

    def set_global_weights(self, tensors: Tensors) -> None:
        """Replace the global state (used by methods that post-process the aggregate)."""
        self._global = {k: v.detach().clone() for k, v in tensors.items()}

    def evaluation_model(self) -> nn.Module:
        if self._model is None:
            self._model = self.model_spec.build()
        load_tensors_(self._model, self._global)
        return self._model

    def state_dict(self) -> tuple[Tensors, dict[str, Any]]:
        return {f"global.{k}": v for k, v in self._global.items()}, {"method": self.name}

    def load_state_dict(self, tensors: Tensors, meta: dict[str, Any]) -> None:
        self._global = {
            k.removeprefix("global."): v for k, v in tensors.items() if k.startswith("global.")
        }


class FedProx(FedAvg):
    """Li et al. (2020): FedAvg whose local objective adds (mu/2)||w - w_global||^2."""

    name = "fedprox"

    def __init__(self, model: ModelSpec, local: TrainConfig, *, mu: float, weighted: bool = True,
                 robust: RobustConfig | None = None,
                 initial: Pretrain | None = None) -> None:
        super().__init__(model, local, weighted=weighted, robust=robust, initial=initial)
        self.mu = mu

    def local_config(self, round: int) -> TrainConfig:
        return replace(super().local_config(round), prox_mu=self.mu)


def fednova_normaliser(tau: int, rho: float) -> float:
    """FedNova's a_i for ``tau`` local SGD steps at momentum ``rho`` (tau without momentum)."""
    tau = max(int(tau), 1)
    if rho == 0.0:
        return float(tau)
    return (tau - rho * (1 - rho**tau) / (1 - rho)) / (1 - rho)


def _momentum(train: TrainConfig) -> float:
    return train.momentum if train.optimizer == "sgd" else 0.0


def normalised_weights(start: Tensors, trained: Tensors, steps: int,
                       train: TrainConfig) -> Tensors:
    """FedNova's upload ``start + (trained - start) / a`` (a: :func:`fednova_normaliser`)."""
    a = fednova_normaliser(steps, _momentum(train))
    return {name: (s.to(torch.float64) + (trained[name].to(torch.float64) - s.to(torch.float64))
                   / a).to(trained[name].dtype)
            for name, s in start.items()}


class FedNova(FedAvg):
    """Wang et al. (2020): average updates normalised by each participant's local steps.

    With tau_i local SGD steps at momentum rho, participant i's normalising factor is
    a_i = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho) (a_i = tau_i without momentum).
    The new global is w - tau_eff * sum_i p_i (w - w_i) / a_i with tau_eff = sum_i p_i a_i.

    Each participant normalises its own update (its tasks say ``normalised_update``) and returns
    z_i = w + (w_i - w) / a_i, so sum_i p_i (w - w_i) / a_i = w - sum_i p_i z_i: the weighted mean
    of the uploads plus the (examples, steps) each participant reports are all FedNova needs,
    and it runs on an encrypted or masked sum like FedAvg.
    """

    name = "fednova"
    needs_only_aggregates = True

    def configure_round(self, round: int, participants: Sequence[str]) -> dict[str, Task]:
        return {pid: replace(task, normalised_update=True)
                for pid, task in super().configure_round(round, participants).items()}

    def combine(self, updates: Sequence[Update], weights: Sequence[float]) -> Tensors:
        mean = self.mean_of(updates, weights)
        return self.step_from_mean(mean, [(w, u.num_steps) for w, u in zip(weights, updates,
                                                                          strict=True)])

    def step_from_mean(self, mean: Tensors, steps: Sequence[tuple[int, int]]) -> Tensors:
        """w - tau_eff * (w - mean of the normalised uploads)."""
        if not steps:
            raise ConfigError("FedNova needs each participant's (examples, local steps) with "
                              "the aggregate; expected them from the round's updates.")
        total = float(sum(n for n, _ in steps))
        rho = _momentum(self.local)
        tau_eff = sum(n / total * fednova_normaliser(tau, rho) for n, tau in steps)
        out: Tensors = {}
        for name, g in self._global.items():
            g64 = g.to(torch.float64)
            out[name] = (g64 - tau_eff * (g64 - mean[name].to(torch.float64))).to(g.dtype)
        return out


__all__ = ["FedAvg", "FedNova", "FedProx", "fednova_normaliser", "normalised_weights",
           "weighted_mean"]
