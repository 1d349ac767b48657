"""The experiment file: a grid of methods x Dirichlet alpha x global architectures x seeds.

Every cell is one in-process federation (:func:`latentfl.simulate.run_simulation`) built from the
``[simulation]`` section, with four things replaced: the method, ``partition.alpha``, the seeds
(``seed``, ``partition.seed`` and ``strategy.local.seed`` all take the cell's seed, so every method
sees the same partition for a given alpha and seed) and the global architecture.

Paths: ``output``, when the file sets it, is relative to the file's folder like every path in a
config file; left out (as in the shipped files), ``latentfl experiment`` writes to
``runs/NAME`` under the current directory, NAME the file's name without ``.toml``, so a run
from a fresh clone never writes into the checkout's experiments folder. A dataset spec (``simulation.data``) is passed to the data loader as written, so a relative
``imagefolder:`` or ``npz:`` path is relative to the working directory: the shipped experiment
files are meant to be run from the repository root.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from latentfl.config import option
from latentfl.data.partition import DIRICHLET_SCHEMES
from latentfl.errors import ConfigError
from latentfl.experiment.scenarios import Scenario
from latentfl.simulate import SimulationConfig
from latentfl.strategies.base import ModelSpec
from latentfl.strategies.registry import Method

#: Methods whose global model *is* the surrogate (the cell's architecture replaces strategy.model).
AVERAGING_METHODS = ("fedavg", "fedprox", "fednova", "dynafed")


@dataclass(frozen=True)
class Architecture:
    """A global architecture of the grid: a registry name and its options."""

    name: str = option("convnet", help="Registry name (convnet, resnet18, vgg11, vit, ...).")
    label: str = option("", help="Name in tables and file names (default: the registry name).")
    options: dict[str, Any] = option({}, help="Options passed to build_model (e.g. width, depth).")

    @property
    def tag(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class ExperimentConfig:
    """A grid of federated runs and where their results go."""

    output: Path | None = option(None, help="Folder for results.csv, table.md, "
                                 "convergence.png and runs/ (none: runs/NAME under the current "
                                 "directory, NAME the file's name without .toml).")
    methods: tuple[str, ...] = option(("fedavg",), help="Methods to compare (fedavg, fedprox, "
                                      "fednova, dynafed, feddgm).")
    alphas: tuple[float, ...] = option((0.5,), help="Dirichlet concentrations of the partition.")
    architectures: tuple[Architecture, ...] = option(
        (), help="Global architectures; empty = the one in simulation.strategy.model.")
    seeds: tuple[int, ...] = option((0,), help="Seeds; table.md reports mean +/- std over them.")
    scenarios: tuple[Scenario, ...] = option(
        (), help="Attack-and-defence settings, one more grid axis ([[scenarios]]); empty = the "
                 "simulation as written.")
    simulation: SimulationConfig = option(SimulationConfig(), help="Settings shared by every cell.")

    def problems(self) -> list[str]:
        known = typing.get_args(Method)
        out = []
        for m in self.methods:
            if m not in known:
                out.append(f"method {m!r} is not available in this version; expected one of "
                           f"{', '.join(known)}.")
        if len(set(self.methods)) != len(self.methods):
            out.append(f"methods {list(self.methods)} repeat a method; list each once.")
        if not self.methods or not self.alphas or not self.seeds:
            out.append("methods, alphas and seeds must each list at least one value.")
        if any(a <= 0 for a in self.alphas):
            out.append(f"alphas {list(self.alphas)} must all be > 0.")
        if any(s < 0 for s in self.seeds):
            out.append(f"seeds {list(self.seeds)} must all be >= 0.")
        tags = [a.tag for a in self.architectures]
        bad = [t for t in tags if not re.fullmatch(r"[A-Za-z0-9_.-]+", t)]
        if bad:
            out.append(f"architecture labels {bad} are not usable in file names; expected "
                       "letters, digits, '_', '.' or '-'.")
        if len(set(tags)) != len(tags):
            out.append(f"architecture labels {tags} repeat; give each a distinct label.")
        labels = [s.label for s in self.scenarios]
        bad = [t for t in labels if not re.fullmatch(r"[A-Za-z0-9_.-]+", t)]
        if bad or len(set(labels)) != len(labels):
            out.append(f"scenario labels {labels} must be distinct and use only letters, digits, "
                       "'_', '.' or '-'.")
        for s in self.scenarios:
            if set(s.methods) - set(self.methods):
                out.append(f"scenario {s.label!r} names methods {list(s.methods)}; expected "
                           f"some of the grid's methods {list(self.methods)}.")
        if self.simulation.partition.scheme not in DIRICHLET_SCHEMES:
            out.append(f"simulation.partition.scheme = {self.simulation.partition.scheme!r}; the "
                       f"grid varies the Dirichlet alpha, so expected one of {DIRICHLET_SCHEMES}.")
        return out


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    method: str
    alpha: float
    architecture: str
    seed: int
    simulation: SimulationConfig
    scenario: str = ""

    @property
    def run_dir(self) -> Path:
        """The cell's folder (its simulation output): rounds.jsonl and cell.json."""
        if self.simulation.output is None:
            raise ValueError(f"cell {self.key} has no output folder; cells come from grid().")
        return self.simulation.output

    @property
    def key(self) -> str:
        """Stable id, also the run folder's name."""
        return cell_key(self.method, self.alpha, self.architecture, self.seed, self.scenario)


def cell_key(method: str, alpha: float, architecture: str, seed: int, scenario: str = "") -> str:
    key = f"{method}__alpha{alpha:g}__{architecture}__seed{seed}"
    return f"{key}__{scenario}" if scenario else key


def output_folder(config: ExperimentConfig) -> Path:
    """The experiment's output folder; ConfigError when none was chosen."""
    if config.output is None:
        raise ConfigError("the experiment has no output folder; set output in the file or "
                          "pass --output DIR.")
    return config.output


def grid(config: ExperimentConfig) -> list[Cell]:
    """Every cell of the grid, in method, alpha, architecture, seed order."""
    base = config.simulation
    archs = config.architectures or (Architecture(name=base.strategy.model.name,
                                                  options=dict(base.strategy.model.options)),)
    cells = []
    for method in config.methods:
        for scenario in config.scenarios or (None,):
            if scenario is not None and not scenario.runs(method):
                continue
            for alpha in config.alphas:
                for arch in archs:
                    for seed in config.seeds:
                        label = scenario.label if scenario is not None else ""
                        key = cell_key(method, alpha, arch.tag, seed, label)
                        strategy = _strategy_for(base, method, arch, seed)
                        sim = replace(
                            base,
                            seed=seed,
                            output=output_folder(config) / "runs" / key,
                            partition=replace(base.partition, alpha=alpha, seed=seed),
                            strategy=strategy,
                        )
                        if scenario is not None:
                            sim = replace(sim, attackers=scenario.attackers,
                                          strategy=scenario.strategy(strategy))
                        cells.append(Cell(method, alpha, arch.tag, seed, sim, label))
    return cells


def restrict(config: ExperimentConfig, selection: str) -> ExperimentConfig:
    """``config`` with its grid cut to the cells ``selection`` names.

    ``selection`` is ``key=value`` pairs joined by commas, keys among method, alpha, architecture
    (its label) and seed; a key given twice keeps both values, a key not given keeps all of them:
    ``"method=dynafed,alpha=0.01,seed=0"`` is one cell of a one-architecture grid; a grid
    with scenarios also takes ``scenario=LABEL``.
    """
    archs = config.architectures or (Architecture(name=config.simulation.strategy.model.name),)
    axes: dict[str, list[tuple[str, Any]]] = {
        "method": [(m, m) for m in config.methods],
        "alpha": [(f"{a:g}", a) for a in config.alphas],
        "architecture": [(a.tag, a) for a in archs],
        "seed": [(str(s), s) for s in config.seeds],
        "scenario": [(s.label, s) for s in config.scenarios],
    }
    wanted: dict[str, list[str]] = {}
    for pair in selection.split(","):
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep or key not in axes or not value:
            raise ConfigError(f"cell selection {pair!r} in {selection!r} is not KEY=VALUE with "
                              f"KEY one of {', '.join(axes)}; expected e.g. "
                              "method=dynafed,alpha=0.01,seed=0.")
        if key == "alpha":
            value = _float_text(value, pair)
        wanted.setdefault(key, []).append(value)
    kept: dict[str, list[Any]] = {}
    for key, values in axes.items():
        names = [name for name, _ in values]
        missing = [v for v in wanted.get(key, []) if v not in names]
        if missing:
            raise ConfigError(f"cell selection {key}={missing[0]} matches no {key} of the grid; "
                              f"expected one of {', '.join(names)}.")
        kept[key] = [obj for name, obj in values if key not in wanted or name in wanted[key]]
    return replace(config, methods=tuple(kept["method"]), alphas=tuple(kept["alpha"]),
                   architectures=tuple(kept["architecture"]) if config.architectures else (),
                   seeds=tuple(kept["seed"]), scenarios=tuple(kept["scenario"]))


def _float_text(value: str, pair: str) -> str:
    try:
        return f"{float(value):g}"
    except ValueError:
        raise ConfigError(f"cell selection {pair!r}: {value!r} is not a number; expected an "
                          "alpha of the grid such as 0.01.") from None


def _strategy_for(base: SimulationConfig, method: str, arch: Architecture, seed: int):
    strategy = base.strategy
    model = ModelSpec(name=arch.name, num_classes=strategy.model.num_classes,
                      in_shape=strategy.model.in_shape, options=dict(arch.options))
    local = replace(strategy.local, seed=seed)
    if method in AVERAGING_METHODS:
        return replace(strategy, method=method, model=model, local=local)
    # methods with a separate global model (FedDGM): the surrogate stays, the global changes
    section = getattr(strategy, method)
    return replace(strategy, method=method, local=local,
                   **{method: replace(section, global_model=model)})


__all__ = ["AVERAGING_METHODS", "Architecture", "Cell", "ExperimentConfig", "cell_key", "grid",
           "output_folder", "restrict"]
