"""``latentfl experiment --config FILE [--set KEY=VALUE ...] [--only CELLS] [--ranks K]``: run
(or resume) an experiment grid, or the part of it ``--only`` names, with ``--set`` overriding keys
of the file.

``--ranks K`` starts the same command on K local ranks with torchrun; a command already started
by torchrun (``WORLD_SIZE`` set) joins its gloo group and runs its share of the cells
(:mod:`latentfl.experiment.runner`). Only rank 0 prints the table.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from latentfl.config import load_config
from latentfl.errors import ConfigError
from latentfl.experiment.config import ExperimentConfig, grid, restrict
from latentfl.experiment.runner import ExperimentResult, Ranks, run_experiment
from latentfl.log import set_log_level
from latentfl.torchrun import free_port, torchrun_command

#: How long a rank that finished its cells waits at the final barrier for the slowest rank.
GRID_TIMEOUT = timedelta(days=30)


def _run(args) -> int:
    if args.ranks < 1:
        raise ConfigError(f"--ranks {args.ranks}: expected a number of ranks of at least 1.")
    if args.ranks > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args)
    config = load_config(args.config, ExperimentConfig, overrides=args.set)
    if args.only:
        config = restrict(config, args.only)
    output = args.output or config.output or Path("runs") / args.config.stem
    config = replace(config, output=Path(os.path.normpath(output)))
    if not args.no_progress and args.log_level == "info":
        # the progress bar shows each round; per-round log lines would only break it up
        set_log_level("warning")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _run_rank(config, args)
    _announce(config)
    result = run_experiment(config, progress=not args.no_progress)
    _report(result)
    return 0


def _run_rank(config: ExperimentConfig, args) -> int:
    """This torchrun rank's share of the grid; rank 0 reports."""
    import torch.distributed as dist  # only grids on several ranks need the process group

    dist.init_process_group("gloo", timeout=GRID_TIMEOUT)
    try:
        ranks = Ranks(dist.get_rank(), dist.get_world_size(), dist.barrier)
        if ranks.rank == 0:
            _announce(config)
        result = run_experiment(config, progress=not args.no_progress and ranks.rank == 0,
                                ranks=ranks)
        if ranks.rank == 0:
            _report(result)
    finally:
        dist.destroy_process_group()
    return 0


def _launch(args) -> int:
    """Run this command on ``--ranks`` local ranks under torchrun; its exit status."""
    argv = ["experiment", "--config", str(args.config), *(f"--set={s}" for s in args.set)]
    if args.only:
        argv += ["--only", args.only]
    if args.output:
        argv += ["--output", str(args.output)]
    if args.no_progress:
        argv.append("--no-progress")
    command = torchrun_command("latentfl", ["--log-level", args.log_level, *argv],
                               nproc_per_node=args.ranks, master_port=free_port())
    return subprocess.run(command, check=False).returncode


def _announce(config: ExperimentConfig) -> None:
    cells = grid(config)
    print(f"experiment: {len(cells)} cells ({len(config.methods)} methods x "
          f"{len(config.alphas)} alphas x {max(1, len(config.architectures))} architectures x "
          f"{len(config.seeds)} seeds) -> {config.output}", flush=True)


def _report(result: ExperimentResult) -> None:
    print(f"ran {len(result.ran)} cells, {len(result.skipped)} already finished", flush=True)
    print((result.output / "table.md").read_text(encoding="utf-8"))
    for name in ("results.csv", "table.md", "convergence.png"):
        print(f"wrote {result.output / name}")


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
        help="Run only these cells: key=value pairs over method, alpha, architecture, seed and "
             "scenario (robustness grids), "
             "e.g. method=dynafed,alpha=0.01,seed=0. results.csv keeps the other cells' rows.")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="Output folder, relative to the current directory (default: the "
                             "file's output, else runs/NAME, NAME the file's name without "
                             ".toml).")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.add_argument(
        "--ranks", type=int, default=1, metavar="K",
        help="Spread the cells over K local ranks (started with torchrun, one thread each); "
             "one results.csv, table.md and plot at the end.")
    parser.set_defaults(handler=_run)


__all__ = ["register"]
