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
from latentfl.strategies.local import LocalTraining, run_task, run_tasks
from latentfl.strategies.registry import StrategyConfig, build_strategy

__all__ = [
    "DynaFed",
    "DynaFedConfig",
    "FedAvg",
    "FedDGM",
    "FedDGMConfig",
    "FedNova",
    "FedProx",
    "LocalTraining",
    "ModelSpec",
    "Strategy",
    "StrategyConfig",
    "Task",
    "Tensors",
    "Update",
    "build_strategy",
    "run_task",
    "run_tasks",
    "select_participants",
    "tensors_digest",
    "weighted_mean",
]
