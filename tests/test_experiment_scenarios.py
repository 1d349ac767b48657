"""Robustness grids: scenarios add an axis of attack-and-defence settings to an experiment."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from latentfl.config import from_dict, load_config
from latentfl.errors import ConfigError
from latentfl.experiment.config import ExperimentConfig, grid, restrict
from latentfl.experiment.report import render_table

ROOT = Path(__file__).resolve().parents[1]
GRID = {
    "output": "out", "methods": ["fedavg", "feddgm"], "alphas": [0.5], "seeds": [0],
    "scenarios": [
        {"label": "clean"},
        {"label": "scale-krum", "methods": ["fedavg"], "robust": {"rule": "krum", "f": 1},
         "attackers": [{"kind": "scale", "count": 1}]},
        {"label": "backdoor-screen", "methods": ["feddgm"], "screening": True,
         "attackers": [{"kind": "backdoor", "count": 1}]},
    ],
    "simulation": {"participants": 5},
}


def test_scenarios_set_attackers_and_the_matching_defence():
    """Each scenario runs only its methods, with its attackers, rule or screening."""
    cells = {c.key: c for c in grid(from_dict(ExperimentConfig, GRID, base_dir=Path("/tmp")))}
    assert sorted(cells) == [
        "fedavg__alpha0.5__convnet__seed0__clean",
        "fedavg__alpha0.5__convnet__seed0__scale-krum",
        "feddgm__alpha0.5__convnet__seed0__backdoor-screen",
        "feddgm__alpha0.5__convnet__seed0__clean",
    ]
    krum = cells["fedavg__alpha0.5__convnet__seed0__scale-krum"].simulation
    assert krum.strategy.robust.rule == "krum" and krum.attackers[0].kind == "scale"
    screened = cells["feddgm__alpha0.5__convnet__seed0__backdoor-screen"].simulation
    assert screened.strategy.feddgm.screening.enabled and screened.attackers[0].kind == "backdoor"
    assert cells["fedavg__alpha0.5__convnet__seed0__clean"].simulation.attackers == ()


def test_only_selects_scenarios_and_bad_labels_are_refused():
    """--only scenario=LABEL keeps that scenario; unknown methods in a scenario are refused."""
    config = from_dict(ExperimentConfig, GRID, base_dir=Path("/tmp"))
    kept = restrict(config, "method=fedavg,scenario=scale-krum")
    assert [c.key for c in grid(kept)] == ["fedavg__alpha0.5__convnet__seed0__scale-krum"]
    bad = {**GRID, "scenarios": [{"label": "x", "methods": ["fednova"]}]}
    with pytest.raises(ConfigError, match="names methods"):
        from_dict(ExperimentConfig, bad, base_dir=Path("/tmp"))


def test_table_has_a_row_per_method_and_scenario_and_a_backdoor_table():
    """table.md names rows 'method / scenario' and adds the backdoor success rate when measured."""
    config = from_dict(ExperimentConfig, GRID, base_dir=Path("/tmp"))
    rows = [{"method": "fedavg", "scenario": "scale-krum", "alpha": 0.5,
             "architecture": "convnet", "final_accuracy": 0.4, "best_accuracy": 0.5,
             "seconds_per_round": 1.0, "backdoor_success": None},
            {"method": "feddgm", "scenario": "backdoor-screen", "alpha": 0.5,
             "architecture": "convnet", "final_accuracy": 0.3, "best_accuracy": 0.3,
             "seconds_per_round": 2.0, "backdoor_success": 0.07}]
    text = render_table(config, rows)
    assert "| fedavg / scale-krum | 40.00 |" in text
    assert "## Backdoor success rate (%)" in text
    assert "| feddgm / backdoor-screen | 7.00 |" in text


def test_shipped_robustness_grid_loads():
    """experiments/robust_cifar10-cpu.toml loads: 57 scenarios, 228 cells."""
    config = load_config(ROOT / "experiments" / "robust_cifar10-cpu.toml", ExperimentConfig)
    assert len(config.scenarios) == 57
    assert len(grid(replace(config, output=Path("/tmp/x")))) == 228
