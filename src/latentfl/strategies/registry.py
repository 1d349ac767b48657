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
from latentfl.training import TrainConfig

Method = Literal["fedavg", "fedprox", "fednova", "feddgm", "dynafed"]


@dataclass(frozen=True)
class StrategyConfig:
    """Which federated method runs, on which surrogate model, with which local training."""

    method: Method = option(
        "fedavg", help="Federated method: fedavg, fedprox, fednova, feddgm or dynafed."
    )
    weighted: bool = option(True, help="Weight participants by their number of examples.")
    mu: float = option(0.01, help="FedProx proximal coefficient mu (fedprox only).", min=0.0)
    model: ModelSpec = option(ModelSpec(), help="The surrogate model participants train.")
    local: TrainConfig = option(TrainConfig(), help="Local training settings sent in every task.")
    dynafed: DynaFedConfig = option(DynaFedConfig(), help="DynaFed server settings (dynafed only).")
    feddgm: FedDGMConfig = option(FedDGMConfig(), help="FedDGM server settings (feddgm only).")
    robust: RobustConfig = option(RobustConfig(), help="Robust aggregation against dishonest "
                                  "participants (fedavg, fedprox, fednova, dynafed).")

    def problems(self) -> list[str]:
        if self.method == "feddgm" and self.robust.enabled:
            return [f"strategy.robust.rule = {self.robust.rule!r} applies to averaging methods; "
                    "FedDGM screens uploads with strategy.feddgm.screening instead."]
        return []


_CLASSES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg, "fedprox": FedProx, "fednova": FedNova, "feddgm": FedDGM, "dynafed": DynaFed
}


def strategy_class(method: Method) -> type[Strategy]:
    """The Strategy class of ``method``, for what it declares (``needs_only_aggregates``)."""
    return _CLASSES[method]


def build_strategy(config: StrategyConfig) -> Strategy:
    """The Strategy object for ``config`` (not yet initialised)."""
    if config.method == "fedprox":
        return FedProx(config.model, config.local, mu=config.mu, weighted=config.weighted,
                       robust=config.robust)
    if config.method == "fednova":
        return FedNova(config.model, config.local, weighted=config.weighted,
                       robust=config.robust)
    if config.method == "feddgm":
        return FedDGM(config.model, config.local, config.feddgm)
    if config.method == "dynafed":
        return DynaFed(config.model, config.local, config=config.dynafed, weighted=config.weighted,
                       robust=config.robust)
    return FedAvg(config.model, config.local, weighted=config.weighted, robust=config.robust)


__all__ = ["Method", "StrategyConfig", "build_strategy", "strategy_class"]
