"""The ``[strategy]`` config section and the one function that turns it into a Strategy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from latentfl.config import option
from latentfl.strategies.base import ModelSpec, Strategy
from latentfl.strategies.defence import RobustConfig
from latentfl.strategies.dynafed import DynaFed, DynaFedConfig
from latentfl.strategies.fedavg import FedAvg, FedNova, FedProx
from latentfl.strategies.feddgm import FedDGM, FedDGMConfig
from latentfl.strategies.prior_only import PriorOnly
from latentfl.strategies.public import PublicDataConfig, PublicOnly, pretrainer
from latentfl.training import TrainConfig

Method = Literal["fedavg", "fedprox", "fednova", "feddgm", "dynafed", "prior_only", "public_only"]

#: Baselines the server runs alone, asking participants for nothing: the simulator and the
#: experiment grid run them; a coordinator has no use for them.
SERVER_ONLY = ("prior_only", "public_only")
#: Methods that can start from a model pretrained on the public data (``public.pretrain``).
PRETRAINABLE = ("fedavg", "fedprox", "feddgm")
#: Methods whose weight averaging the robust rules replace.
ROBUST_METHODS = ("fedavg", "fedprox", "fednova", "dynafed")


@dataclass(frozen=True)
class StrategyConfig:
    """Which federated method runs, on which surrogate model, with which local training."""

    method: Method = option(
        "fedavg", help="Federated method: fedavg, fedprox, fednova, feddgm or dynafed; or a "
        "baseline the server runs alone with no participant input: prior_only (FedDGM's server "
        "training on plain class-conditional samples of its prior, as many as FedDGM's sets "
        "hold) or public_only (the model trained on [strategy.public] data)."
    )
    weighted: bool = option(True, help="Weight participants by their number of examples.")
    mu: float = option(0.01, help="FedProx proximal coefficient mu (fedprox only).", min=0.0)
    model: ModelSpec = option(ModelSpec(), help="The surrogate model participants train.")
    local: TrainConfig = option(TrainConfig(), help="Local training settings sent in every task.")
    dynafed: DynaFedConfig = option(DynaFedConfig(), help="DynaFed server settings (dynafed only).")
    feddgm: FedDGMConfig = option(
        FedDGMConfig(), help="FedDGM server settings (feddgm and prior_only).")
    public: PublicDataConfig = option(
        PublicDataConfig(), help="Public data the server holds (public_only, pretrain).")
    robust: RobustConfig = option(RobustConfig(), help="Robust aggregation against dishonest "
                                  "participants (fedavg, fedprox, fednova, dynafed).")

    def problems(self) -> list[str]:
        out = []
        if self.robust.enabled and self.method not in ROBUST_METHODS:
            out.append(f"strategy.robust.rule = {self.robust.rule!r} applies to averaging "
                       f"methods ({', '.join(ROBUST_METHODS)}); method is {self.method!r}"
                       + ("; FedDGM screens uploads with strategy.feddgm.screening instead."
                          if self.method == "feddgm" else "."))
        if self.public.pretrain and self.method not in PRETRAINABLE:
            out.append(f"public.pretrain = true applies to {', '.join(PRETRAINABLE)}; method is "
                       f"{self.method!r}.")
        if (self.public.pretrain or self.method == "public_only") and not self.public.data:
            out.append("public.data is empty; public_only and public.pretrain = true need the "
                       "public data's dataset spec.")
        return out


_CLASSES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg, "fedprox": FedProx, "fednova": FedNova, "feddgm": FedDGM,
    "dynafed": DynaFed, "prior_only": PriorOnly, "public_only": PublicOnly,
}


def strategy_class(method: Method) -> type[Strategy]:
    """The Strategy class of ``method``, for what it declares (``needs_only_aggregates``)."""
    return _CLASSES[method]


def build_strategy(config: StrategyConfig) -> Strategy:
    """The Strategy object for ``config`` (not yet initialised)."""
    initial = pretrainer(config.public)
    if config.method == "fedprox":
        return FedProx(config.model, config.local, mu=config.mu, weighted=config.weighted,
                       robust=config.robust, initial=initial)
    if config.method == "fednova":
        return FedNova(config.model, config.local, weighted=config.weighted,
                       robust=config.robust)
    if config.method == "feddgm":
        return FedDGM(config.model, config.local, config.feddgm, initial=initial)
    if config.method == "prior_only":
        return PriorOnly(config.model, config.local, config.feddgm)
    if config.method == "public_only":
        return PublicOnly(config.model, config.local, config.public)
    if config.method == "dynafed":
        return DynaFed(config.model, config.local, config=config.dynafed, weighted=config.weighted,
                       robust=config.robust)
    return FedAvg(config.model, config.local, weighted=config.weighted, robust=config.robust,
                  initial=initial)


__all__ = ["PRETRAINABLE", "SERVER_ONLY", "Method", "StrategyConfig", "build_strategy",
           "strategy_class"]
