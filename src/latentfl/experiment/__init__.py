"""Experiment grids: methods x Dirichlet alpha x global architectures x seeds, in the simulator."""

from latentfl.experiment.config import Architecture, Cell, ExperimentConfig, grid, restrict
from latentfl.experiment.runner import ExperimentResult, Ranks, read_results, run_experiment

__all__ = [
    "Architecture",
    "Cell",
    "ExperimentConfig",
    "ExperimentResult",
    "Ranks",
    "grid",
    "read_results",
    "restrict",
    "run_experiment",
]
