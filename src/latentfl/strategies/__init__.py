"""Server-side federated methods behind one narrow interface (no networking here)."""

from latentfl.strategies.base import (
    Aggregation,
    ModelSpec,
    Strategy,
    SyntheticImages,
    Task,
    Tensors,
    Update,
    select_participants,
    tensors_digest,
)
from latentfl.strategies.capabilities import (
    FixesInputStats,
    MakesSyntheticSets,
    SetsAside,
    UsesDistiller,
    input_stats_of,
    set_aside_of,
    synthetic_sets_of,
)
from latentfl.strategies.dynafed import DynaFed, DynaFedConfig
from latentfl.strategies.fedavg import FedAvg, FedNova, FedProx, weighted_mean
from latentfl.strategies.feddgm import FedDGM, FedDGMConfig
from latentfl.strategies.local import LocalTraining, run_task, run_tasks
from latentfl.strategies.registry import StrategyConfig, build_strategy, strategy_class

__all__ = [
    "Aggregation",
    "DynaFed",
    "DynaFedConfig",
    "FedAvg",
    "FedDGM",
    "FedDGMConfig",
    "FedNova",
    "FedProx",
    "FixesInputStats",
    "LocalTraining",
    "MakesSyntheticSets",
    "ModelSpec",
    "SetsAside",
    "Strategy",
    "StrategyConfig",
    "SyntheticImages",
    "Task",
    "Tensors",
    "Update",
    "UsesDistiller",
    "build_strategy",
    "input_stats_of",
    "run_task",
    "run_tasks",
    "select_participants",
    "set_aside_of",
    "strategy_class",
    "synthetic_sets_of",
    "tensors_digest",
    "weighted_mean",
]
