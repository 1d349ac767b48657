"""An experiment grid spread over ranks: the table of one rank; resumable whichever rank ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from latentfl.config import load_config
from latentfl.experiment import ExperimentConfig, Ranks, grid, read_results, run_experiment
from test_experiment import write_npz, write_toy_experiment


def accuracy_part(table: str) -> str:
    """table.md without its wall-clock section (seconds differ from run to run)."""
    return table.split("## Time")[0]


def test_two_ranks_give_the_table_of_one_rank(tmp_path: Path) -> None:
    """`latentfl experiment --ranks 2` runs each cell once and writes one results.csv and
    table.md equal to a one-rank run's."""
    data = write_npz(tmp_path / "toy.npz")
    extra = "[simulation.strategy.local]\nepochs = 1\nbatch_size = 32\nlr = 0.05\n"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = write_toy_experiment(tmp_path / "one" / "exp.toml", ["fedavg", "fedprox"], data, 2,
                               extra=extra)
    two = tmp_path / "two" / "exp.toml"
    two.write_text(one.read_text())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank has
    try:
        reference = run_experiment(load_config(one, ExperimentConfig), progress=False)
    finally:
        torch.set_num_threads(threads)
    command = [sys.executable, "-m", "latentfl", "experiment", "--config", str(two), "--ranks",
               "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ran 2 cells, 0 already finished" in done.stdout
    out_one, out_two = tmp_path / "one" / "out", tmp_path / "two" / "out"
    assert accuracy_part((out_two / "table.md").read_text()) == accuracy_part(
        (out_one / "table.md").read_text())
    drop = ("seconds", "seconds_per_round", "server_seconds_per_round")
    assert [{k: v for k, v in r.items() if k not in drop} for r in read_results(
        out_two / "results.csv")] == [{k: v for k, v in r.items() if k not in drop}
                                      for r in reference.rows]
    assert (out_two / "convergence.png").stat().st_size > 0


def test_a_cell_another_rank_finished_is_not_rerun(tmp_path: Path) -> None:
    """Rank 1 of 2 runs its share and writes only row.json files; a later one-rank run reruns
    only the other cells and reports all of them in results.csv."""
    data = write_npz(tmp_path / "toy.npz")
    path = write_toy_experiment(tmp_path / "exp.toml", ["fedavg", "fedprox", "fednova"], data, 1)
    config = load_config(path, ExperimentConfig)
    waited = []
    part = run_experiment(config, progress=False, ranks=Ranks(1, 2, lambda: waited.append(1)))
    assert waited == [1] and len(part.ran) == 1
    assert not (config.output / "results.csv").exists()
    rest = run_experiment(config, progress=False)
    assert rest.skipped == part.ran and len(rest.ran) == 2 and part.ran[0] not in rest.ran
    assert [r["cell"] for r in read_results(config.output / "results.csv")] == [
        c.key for c in grid(config)]
