"""The Strategy port stays method-agnostic: what only some methods do is a capability protocol a
runner checks for, and the port's module imports nothing method-specific."""

from __future__ import annotations

import ast
from pathlib import Path

import latentfl.strategies.base as base
from latentfl.strategies import (
    DynaFed,
    FedAvg,
    FedNova,
    FixesInputStats,
    MakesSyntheticSets,
    ModelSpec,
    UsesDistiller,
    input_stats_of,
    synthetic_sets_of,
)
from latentfl.strategies.dynafed import DynaFedConfig
from latentfl.strategies.feddgm import FedDGM, FedDGMConfig
from latentfl.training import TrainConfig

SPEC = ModelSpec(name="convnet", num_classes=3, in_shape=(3, 8, 8),
                 options={"width": 4, "depth": 1})
CAPABILITIES = (MakesSyntheticSets, UsesDistiller, FixesInputStats)


def test_feddgm_has_every_capability_and_the_averaging_methods_none():
    """FedDGM makes synthetic sets, takes a distiller and fixes its input statistics; FedAvg,
    FedNova and DynaFed do none of it, and the runner's helpers give 'nothing' for them."""
    feddgm = FedDGM(SPEC, TrainConfig(), FedDGMConfig(global_model=SPEC, ipc=1, device="cpu",
                                                      mean=(0.5,) * 3, std=(0.25,) * 3))
    assert all(isinstance(feddgm, capability) for capability in CAPABILITIES)
    assert input_stats_of(feddgm) == ((0.5,) * 3, (0.25,) * 3)
    assert synthetic_sets_of(feddgm) == {}  # no round aggregated yet
    for other in (FedAvg(SPEC, TrainConfig()), FedNova(SPEC, TrainConfig()),
                  DynaFed(SPEC, TrainConfig(), config=DynaFedConfig())):
        assert not any(isinstance(other, capability) for capability in CAPABILITIES)
        assert synthetic_sets_of(other) == {} and input_stats_of(other) is None


def test_the_port_imports_nothing_method_specific():
    """strategies/base.py imports no distillation code and no method module."""
    tree = ast.parse(Path(base.__file__).read_text(encoding="utf-8"))
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names]
    assert not [m for m in imported if m.startswith(("latentfl.distill", "latentfl.strategies"))]
