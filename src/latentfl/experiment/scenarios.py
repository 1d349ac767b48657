"""Robustness scenarios of an experiment grid: which participants attack, which defence runs.

An experiment's ``[[scenarios]]`` add one axis to the grid: each scenario replaces the
simulation's attackers, the averaging methods' ``strategy.robust`` and FedDGM's upload
screening, and may be limited to some of the grid's methods (a robust rule means nothing to
FedDGM, screening nothing to FedAvg). Without scenarios the grid runs the simulation as written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from latentfl.attacks import AttackerConfig
from latentfl.config import option
from latentfl.strategies.defence import RobustConfig
from latentfl.strategies.registry import StrategyConfig


@dataclass(frozen=True)
class Scenario:
    """One attack-and-defence setting of a robustness grid."""

    label: str = option(help="Name in tables and file names (letters, digits, '_', '.', '-').")
    attackers: tuple[AttackerConfig, ...] = option(
        (), help="Dishonest participants (as [[simulation.attackers]]); empty = no attack.")
    robust: RobustConfig = option(RobustConfig(), help="Robust rule of the averaging methods.")
    screening: bool = option(False, help="FedDGM upload screening on (feddgm only).")
    methods: tuple[str, ...] = option(
        (), help="Methods of the grid this scenario runs (empty = all).")

    def runs(self, method: str) -> bool:
        return not self.methods or method in self.methods

    def strategy(self, strategy: StrategyConfig) -> StrategyConfig:
        """``strategy`` with this scenario's defence."""
        if strategy.method == "feddgm":
            screening = replace(strategy.feddgm.screening, enabled=self.screening)
            return replace(strategy, feddgm=replace(strategy.feddgm, screening=screening))
        return replace(strategy, robust=self.robust)


__all__ = ["Scenario"]
