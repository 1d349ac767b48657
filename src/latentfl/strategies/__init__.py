"""Server-side federated methods behind one narrow interface (no networking here)."""

from latentfl.strategies.base import (
    ModelSpec,
    Strategy,
    Task,
    Tensors,
    Update,
    select_participants,
    tensors_digest,
)
from latentfl.strategies.dynafed import DynaFed, DynaFedConfig
from latentfl.strategies.fedavg import FedAvg, FedNova, FedProx, weighted_mean
from latentfl.strategies.feddgm import FedDGM, FedDGMConfig
from latentfl.strategies.local import run_task
from latentfl.strategies.registry import StrategyConfig, build_strategy

__all__ = [
    "DynaFed",
    "DynaFedConfig",
    "FedAvg",
    "FedDGM",
    "FedDGMConfig",
    "FedNova",
    "FedProx",
    "ModelSpec",
    "Strategy",
    "StrategyConfig",
    "Task",
    "Tensors",
    "Update",
    "build_strategy",
    "run_task",
    "select_participants",
    "tensors_digest",
    "weighted_mean",
]
