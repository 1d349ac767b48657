"""What the server can do with public data alone: the ``public_only`` baseline and the
pretrained start that FedAvg, FedProx and FedDGM take with ``[strategy.public] pretrain``.

A class-conditional prior trained on labelled public data carries that data's label knowledge
into FedDGM, so a fair comparison gives the other methods the same public data: trained on it
alone with no participant (``public_only``), or started from a model pretrained on it. Both use
one function, :func:`train_on_public`. The public data must never hold a participant's image.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from latentfl.config import option
from latentfl.data import load_dataset, to_tensors
from latentfl.errors import ConfigError
from latentfl.log import get_logger
from latentfl.models import load_tensors_, state_to_tensors
from latentfl.seeding import derive_seed
from latentfl.strategies.base import ModelSpec, Pretrain, Strategy, Task, Tensors, Update
from latentfl.training import TrainConfig, train

log = get_logger("public")


@dataclass(frozen=True)
class PublicDataConfig:
    """The public data the server holds (the ``[strategy.public]`` section)."""

    data: str = option(
        "", help="Dataset spec of the public data the prior was trained on (its train split), "
        "e.g. npz:runs/public/cifar10-public.npz; empty = none. It must never hold a "
        "participant's image.")
    max_examples: int = option(
        0, help="Use a seeded random subset of at most this many public images (0 = all).", min=0)
    train: TrainConfig = option(
        TrainConfig(epochs=30, batch_size=256, lr=0.01, momentum=0.9, augment=True),
        help="Training on the public data (public_only, and the pretrained start).")
    pretrain: bool = option(
        False, help="Start the model(s) from weights trained on the public data (fedavg, "
        "fedprox, feddgm: the *_pretrained baselines of an experiment grid).")
    device: str = option("cpu", help="Device of the training on public data.")


def public_tensors(config: PublicDataConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The public images (normalised with their own statistics) and labels, subsampled."""
    if not config.data:
        raise ConfigError("[strategy.public] data is empty; public_only and pretrain = true "
                          "need a dataset spec of the public data, e.g. npz:PUBLIC.npz.")
    ds = load_dataset(config.data)
    x, y = to_tensors(ds.train, ds.mean, ds.std)
    if config.max_examples and len(y) > config.max_examples:
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(
            derive_seed(seed, "public-subset")))
        keep = order[: config.max_examples]
        x, y = x[keep], y[keep]
    return x, y


#: (config, seed, initial weights) -> (trained weights, seconds). A grid trains the same public
#: model for every alpha and for each method started from it; training is deterministic for its
#: seed and initial weights, so a process trains each once.
_trained: dict[tuple[str, int, str], tuple[Tensors, float]] = {}


def _weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in state_to_tensors(model).items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_on_public(model: nn.Module, config: PublicDataConfig, seed: int) -> float:
    """Train ``model`` in place on the public data; the seconds its training took (the first
    time: a repeat in the same process loads the weights trained then)."""
    key = (repr(config), seed, _weights_digest(model))
    if key in _trained:
        weights, seconds = _trained[key]
        load_tensors_(model, weights)
        log.info("reused_public_model", data=config.data, seconds=round(seconds, 2))
        return seconds
    started = time.perf_counter()
    x, y = public_tensors(config, seed)
    classes = int(y.max()) + 1
    with torch.no_grad():
        out = model(x[:1]).shape[-1]
    if classes > out:
        raise ConfigError(f"public data {config.data} has {classes} classes; the model predicts "
                          f"{out}, so expected public data with at most {out} classes.")
    train(model, x, y, replace(config.train, seed=derive_seed(seed, "public")),
          device=config.device)
    model.cpu()
    seconds = time.perf_counter() - started
    _trained[key] = (state_to_tensors(model), seconds)
    log.info("trained_on_public", data=config.data, examples=len(y), seconds=round(seconds, 2))
    return seconds


def pretrainer(config: PublicDataConfig) -> Pretrain | None:
    """The initial-weights function of ``config`` (None unless ``pretrain`` is set)."""
    if not config.pretrain:
        return None

    def pretrain(model: nn.Module, seed: int) -> None:
        train_on_public(model, config, seed)

    return pretrain


class PublicOnly(Strategy):
    """Baseline: the model trained on the public data alone, in round 1; no participant input.

    Rounds ask participants for nothing; later rounds keep the model.
    """

    name = "public_only"

    def __init__(self, model: ModelSpec, local: TrainConfig, public: PublicDataConfig) -> None:
        super().__init__(model, local)
        self.public = public
        self._seed = 0
        self._model: nn.Module | None = None
        self._trained = False

    def initialize(self, seed: int) -> None:
        self._seed = seed
        torch.manual_seed(seed)
        self._model = self.model_spec.build()
        self._trained = False

    def configure_round(self, round: int, participants: Sequence[str]) -> dict[str, Task]:
        return {}

    def aggregate_round(self, round: int, updates: Sequence[Update]) -> dict[str, float]:
        if self._trained:
            return {"public_seconds": 0.0}
        seconds = train_on_public(self._model, self.public, self._seed)
        self._trained = True
        return {"public_seconds": seconds}

    def global_weights(self) -> Tensors:
        return state_to_tensors(self._model)

    def evaluation_model(self) -> nn.Module:
        return self._model

    def state_dict(self) -> tuple[Tensors, dict[str, Any]]:
        return ({f"global.{k}": v for k, v in state_to_tensors(self._model).items()},
                {"method": self.name, "seed": self._seed, "trained": self._trained})

    def load_state_dict(self, tensors: Tensors, meta: dict[str, Any]) -> None:
        self._seed = int(meta.get("seed", self._seed))
        self._trained = bool(meta.get("trained", False))
        load_tensors_(self._model, {k.removeprefix("global."): v for k, v in tensors.items()
                                    if k.startswith("global.")})


__all__ = ["PublicDataConfig", "PublicOnly", "pretrainer", "public_tensors",
           "train_on_public"]
