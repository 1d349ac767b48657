"""``latentfl experiment --config FILE [--set KEY=VALUE ...] [--only CELLS]``: run (or resume) an
experiment grid, or the part of it ``--only`` names, with ``--set`` overriding keys of the file."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from latentfl.config import load_config
from latentfl.experiment.config import ExperimentConfig, grid, restrict
from latentfl.experiment.runner import run_experiment
from latentfl.log import set_log_level


def _run(args) -> int:
    config = load_config(args.config, ExperimentConfig, overrides=args.set)
    if args.only:
        config = restrict(config, args.only)
    output = args.output or config.output or Path("runs") / args.config.stem
    config = replace(config, output=Path(os.path.normpath(output)))
    if not args.no_progress and args.log_level == "info":
        # the progress bar shows each round; per-round log lines would only break it up
        set_log_level("warning")
    cells = grid(config)
    print(f"experiment: {len(cells)} cells ({len(config.methods)} methods x "
          f"{len(config.alphas)} alphas x {max(1, len(config.architectures))} architectures x "
          f"{len(config.seeds)} seeds) -> {config.output}", flush=True)
    result = run_experiment(config, progress=not args.no_progress)
    print(f"ran {len(result.ran)} cells, {len(result.skipped)} already finished", flush=True)
    print((result.output / "table.md").read_text(encoding="utf-8"))
    for name in ("results.csv", "table.md", "convergence.png"):
        print(f"wrote {result.output / name}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="Run a grid of methods x alpha x architectures x seeds in the simulator (resumable).")
    parser.add_argument("--config", required=True, type=Path, help="Experiment TOML file.")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="Override a key of the file, as a dotted path and a TOML value (repeatable), e.g. "
             "--set simulation.rounds=2 --set simulation.data=imagefolder:data/cifar10.tar.gz; "
             "relative paths are relative to the file's folder, as in the file.")
    parser.add_argument(
        "--only", metavar="CELLS",
        help="Run only these cells: key=value pairs over method, alpha, architecture and seed, "
             "e.g. method=dynafed,alpha=0.01,seed=0. results.csv keeps the other cells' rows.")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="Output folder, relative to the current directory (default: the "
                             "file's output, else runs/NAME, NAME the file's name without "
                             ".toml).")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.set_defaults(handler=_run)


__all__ = ["register"]
