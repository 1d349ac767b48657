"""Experiment runner: grid cells, resumption, results.csv, table.md and the convergence plot."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from latentfl.config import from_dict, load_config
from latentfl.errors import ConfigError
from latentfl.experiment import ExperimentConfig, grid, read_results, run_experiment
from latentfl.experiment.config import restrict
from latentfl.experiment.report import mean_std

REPO = Path(__file__).resolve().parents[1]


def write_npz(path: Path) -> str:
    """A 4-class 8x8 RGB set whose class shows as a colour, 240 train / 40 test images."""
    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 4
        x = colours[y][:, None, None, :] + rng.normal(0, 40, (n, 8, 8, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    x, y = make(240)
    xt, yt = make(40)
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    return f"npz:{path}"


def tiny_config(tmp_path: Path, **top) -> ExperimentConfig:
    data = {
        "output": str(tmp_path / "out"),
        "methods": ["fedavg", "fedprox"],
        "alphas": [0.5, 5.0],
        "seeds": [0, 1],
        "simulation": {
            "data": write_npz(tmp_path / "toy.npz"),
            "participants": 3,
            "rounds": 2,
            "device": "cpu",
            "partition": {"min_size": 5},
            "strategy": {
                "model": {"num_classes": 4, "in_shape": [3, 8, 8],
                          "options": {"width": 4, "depth": 1}},
                "local": {"epochs": 1, "batch_size": 32, "lr": 0.05},
            },
        },
    }
    data.update(top)
    return from_dict(ExperimentConfig, data)


def write_toy_experiment(path: Path, methods: list[str], data: str, rounds: int,
                         extra: str = "") -> Path:
    """A two-participant experiment file on 8x8 toy images, ``extra`` TOML appended."""
    path.write_text(f"""
output = "out"
methods = {json.dumps(methods)}
alphas = [1.0]
[simulation]
data = "{data}"
participants = 2
rounds = {rounds}
device = "cpu"
[simulation.partition]
min_size = 5
[simulation.strategy.model]
num_classes = 4
in_shape = [3, 8, 8]
options = {{ width = 4, depth = 1 }}
{extra}""")
    return path


def rounds_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_grid_covers_every_combination_with_cell_settings(tmp_path: Path) -> None:
    """Each cell gets its method, alpha, seed (partition and local too) and architecture."""
    cfg = tiny_config(tmp_path, architectures=[
        {"name": "convnet", "label": "narrow", "options": {"width": 4, "depth": 1}},
        {"name": "convnet", "label": "wide", "options": {"width": 8, "depth": 1}}])
    cells = grid(cfg)
    assert len(cells) == 2 * 2 * 2 * 2 and len({c.key for c in cells}) == 16
    cell = next(c for c in cells if c.key == "fedprox__alpha5__wide__seed1")
    sim = cell.simulation
    assert sim.strategy.method == "fedprox" and sim.partition.alpha == 5.0
    assert sim.seed == 1 and sim.partition.seed == 1 and sim.strategy.local.seed == 1
    assert sim.strategy.model.options == {"width": 8, "depth": 1}
    assert sim.strategy.model.in_shape == (3, 8, 8)
    assert sim.output == cfg.output / "runs" / cell.key


def test_feddgm_cells_replace_the_global_model_and_keep_the_surrogate(tmp_path: Path) -> None:
    """For FedDGM the architecture is the server's global model; for FedAvg it is the model."""
    cfg = tiny_config(tmp_path, methods=["fedavg", "feddgm"], alphas=[0.5], seeds=[0],
                      architectures=[{"name": "vgg11", "label": "vgg"}])
    fedavg, feddgm = grid(cfg)
    assert fedavg.simulation.strategy.model.name == "vgg11"
    strategy = feddgm.simulation.strategy
    assert strategy.method == "feddgm" and strategy.model.name == "convnet"
    assert strategy.feddgm.global_model.name == "vgg11"
    assert strategy.feddgm.global_model.in_shape == (3, 8, 8)
    assert strategy.feddgm.global_model.num_classes == 4


def test_unknown_method_is_a_config_error(tmp_path: Path) -> None:
    """A method the registry does not know is refused before anything runs, naming it."""
    with pytest.raises(ConfigError, match="fedxyz"):
        tiny_config(tmp_path, methods=["fedavg", "fedxyz"])


def test_results_csv_and_table_match_round_records(tmp_path: Path) -> None:
    """results.csv rows, table.md means/stds and the plot agree with the per-round records."""
    cfg = tiny_config(tmp_path)
    result = run_experiment(cfg, progress=False)
    out = cfg.output
    assert len(result.ran) == 8 and not result.skipped
    rows = read_results(out / "results.csv")
    assert [r["cell"] for r in rows] == [c.key for c in grid(cfg)]
    for row, cell in zip(rows, grid(cfg), strict=True):
        acc = [r["accuracy"] for r in rounds_of(cell.run_dir / "rounds.jsonl")]
        assert len(acc) == 2
        assert row["final_accuracy"] == pytest.approx(acc[-1], abs=1e-6)
        assert row["best_accuracy"] == pytest.approx(max(acc), abs=1e-6)
        assert acc[row["best_round"] - 1] == pytest.approx(max(acc), abs=1e-6)
        # the server's part of a round is part of the round
        assert 0 < row["server_seconds_per_round"] < row["seconds_per_round"]
    table = (out / "table.md").read_text()
    assert "## Final-round test accuracy (%)" in table and "## Best-round test accuracy (%)" in table
    final_section = table.split("## Best-round")[0]
    for method in ("fedavg", "fedprox"):
        vals = [100 * r["final_accuracy"] for r in rows
                if r["method"] == method and r["alpha"] == 0.5]
        mean, std = mean_std(vals)
        line = next(ln for ln in final_section.splitlines() if ln.startswith(f"| {method} |"))
        assert line.split("|")[2].strip() == f"{mean:.2f} ± {std:.2f}"
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "results.csv").open() as fh:
        header = next(csv.reader(fh))
    assert header[:5] == ["cell", "method", "alpha", "architecture", "seed"]


def test_resume_runs_only_unfinished_cells(tmp_path: Path) -> None:
    """An interrupted grid resumes where it stopped; finished cells are not run again."""
    cfg = tiny_config(tmp_path, alphas=[0.5], seeds=[0, 1])
    done: list[str] = []

    def stop_after_two(cell, row) -> None:
        done.append(cell.key)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, progress=False, on_cell=stop_after_two)
    assert len(read_results(cfg.output / "results.csv")) == 2
    first = {k: (cfg.output / "runs" / k / "rounds.jsonl").stat().st_mtime_ns for k in done}
    result = run_experiment(cfg, progress=False)
    assert sorted(result.skipped) == sorted(done)
    assert len(result.ran) == 2 and not set(result.ran) & set(done)
    for key, mtime in first.items():
        assert (cfg.output / "runs" / key / "rounds.jsonl").stat().st_mtime_ns == mtime
    again = run_experiment(cfg, progress=False)
    assert again.ran == [] and len(again.rows) == 4


def test_torn_or_changed_cell_is_run_again(tmp_path: Path) -> None:
    """A cell whose round records are incomplete, or whose settings changed, runs again."""
    cfg = tiny_config(tmp_path, methods=["fedavg"], alphas=[0.5], seeds=[0, 1])
    run_experiment(cfg, progress=False)
    torn = grid(cfg)[1]
    lines = (torn.run_dir / "rounds.jsonl").read_text().splitlines()
    (torn.run_dir / "rounds.jsonl").write_text(lines[0] + "\n")
    assert run_experiment(cfg, progress=False).ran == [torn.key]
    longer = replace(cfg, simulation=replace(cfg.simulation, rounds=3))
    assert len(run_experiment(longer, progress=False).ran) == 2


def test_shipped_experiment_files_load() -> None:
    """Every experiments/*.toml parses, starts with its command, lists known methods, and
    leaves the output folder to the working directory (never the checkout's)."""
    files = sorted((REPO / "experiments").glob("*.toml"))
    assert files
    for path in files:
        text = path.read_text()
        assert text.startswith(f"# latentfl experiment --config experiments/{path.name}")
        cfg = load_config(path, ExperimentConfig)
        assert cfg.output is None, path.name
        assert grid(replace(cfg, output=Path("runs") / path.stem))


def test_infeasible_partition_is_reported_not_fatal(tmp_path: Path) -> None:
    """Cells whose Dirichlet split cannot be drawn are listed and shown; the rest still run."""
    cfg = tiny_config(tmp_path, methods=["fedavg"], alphas=[5.0, 0.001], seeds=[0])
    cfg = replace(cfg, simulation=replace(
        cfg.simulation, partition=replace(cfg.simulation.partition, min_size=70)))
    result = run_experiment(cfg, progress=False)
    assert result.ran == ["fedavg__alpha5__convnet__seed0"]
    assert list(result.infeasible) == ["fedavg__alpha0.001__convnet__seed0"]
    table = (cfg.output / "table.md").read_text()
    assert "| fedavg |" in table and "no partition" in table and "alpha=0.001" in table


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dynafed_cifar10-smoke", "feddgm_cifar10-smoke"])
def test_smoke_config_runs_end_to_end(tmp_path: Path, name: str) -> None:
    """The shipped smoke configs run every cell and write the table and the plot."""
    cfg = load_config(REPO / "experiments" / f"{name}.toml", ExperimentConfig)
    cfg = replace(cfg, output=tmp_path / name)
    result = run_experiment(cfg, progress=False)
    assert len(result.rows) == len(grid(cfg)) and not result.infeasible
    for file in ("results.csv", "table.md", "convergence.png"):
        assert (cfg.output / file).stat().st_size > 0


def test_cli_runs_and_resumes_a_grid(tmp_path: Path, capsys) -> None:
    """`latentfl experiment --config FILE` writes the outputs, prints the table, then resumes."""
    from latentfl.cli import main

    spec = write_npz(tmp_path / "toy.npz")
    write_toy_experiment(tmp_path / "exp.toml", ["fedavg", "dynafed"], spec, 2, extra="""
[simulation.strategy.dynafed]
trajectory_length = 2
ipc = 1
syn_steps = 2
iterations = 2
finetune_steps = 2
""")
    args = ["experiment", "--config", str(tmp_path / "exp.toml"), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ran 2 cells, 0 already finished" in printed and "| dynafed |" in printed
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "results.csv", "table.md", "convergence.png", "runs"}
    assert main(args) == 0
    assert "ran 0 cells, 2 already finished" in capsys.readouterr().out


def test_restrict_keeps_only_the_named_cells(tmp_path: Path) -> None:
    """--only keeps the named values of each axis and every value of the axes it does not name."""
    cfg = restrict(tiny_config(tmp_path), "method=fedprox,alpha=5,seed=1,seed=0")
    assert [c.key for c in grid(cfg)] == ["fedprox__alpha5__convnet__seed0",
                                         "fedprox__alpha5__convnet__seed1"]
    assert [c.key for c in grid(restrict(cfg, "architecture=convnet,seed=1"))] == [
        "fedprox__alpha5__convnet__seed1"]


@pytest.mark.parametrize(("selection", "words"), [
    ("method=fednova", "method=fednova matches no method"),
    ("alpha=0.3", "alpha=0.3 matches no alpha"),
    ("alpha=small", "'small' is not a number"),
    ("colour=red", "KEY one of method, alpha, architecture, seed"),
    ("method", "is not KEY=VALUE"),
])
def test_restrict_names_a_bad_selection(tmp_path: Path, selection: str, words: str) -> None:
    """A selection naming an unknown key or a value outside the grid is one clear ConfigError."""
    with pytest.raises(ConfigError, match=words):
        restrict(tiny_config(tmp_path), selection)


def test_overrides_replace_keys_of_the_file_before_checking(tmp_path: Path) -> None:
    """--set values are TOML (or bare strings), reach nested tables, and are validated as the file."""
    path = tmp_path / "exp.toml"
    path.write_text('output = "out"\n[simulation]\ndata = "builtin:cifar10-mini"\nrounds = 3\n')
    cfg = load_config(path, ExperimentConfig, overrides=[
        "simulation.rounds=1", "alphas=[0.1, 0.01]", "simulation.data=npz:x.npz",
        "simulation.strategy.local.lr=0.5"])
    assert cfg.simulation.rounds == 1 and cfg.alphas == (0.1, 0.01)
    assert cfg.simulation.data == "npz:x.npz" and cfg.simulation.strategy.local.lr == 0.5
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        load_config(path, ExperimentConfig, overrides=["simulation.rounds"])
    with pytest.raises(ConfigError, match="simulation.rounds is a value, not a table"):
        load_config(path, ExperimentConfig, overrides=["simulation.rounds.x=1"])
    with pytest.raises(ConfigError, match="unknown key 'round'"):
        load_config(path, ExperimentConfig, overrides=["simulation.round=1"])


def test_cli_runs_one_cell_and_keeps_the_other_rows(tmp_path: Path, capsys) -> None:
    """`--only` runs one cell with `--set` overrides; results.csv keeps the cells run before."""
    from latentfl.cli import main

    spec = write_npz(tmp_path / "toy.npz")
    write_toy_experiment(tmp_path / "exp.toml", ["fedavg", "fedprox"], "builtin:absent", 3)
    base = ["experiment", "--config", str(tmp_path / "exp.toml"), "--no-progress",
            "--set", f"simulation.data={spec}", "--set", "simulation.rounds=1"]
    assert main([*base, "--only", "method=fedprox"]) == 0
    assert "ran 1 cells, 0 already finished" in capsys.readouterr().out
    assert main([*base, "--only", "method=fedavg,alpha=1"]) == 0
    assert "ran 1 cells, 0 already finished" in capsys.readouterr().out
    rows = read_results(tmp_path / "out" / "results.csv")
    assert sorted(r["method"] for r in rows) == ["fedavg", "fedprox"]
    assert all(r["rounds"] == 1 for r in rows)
    assert main([*base, "--only", "seed=7"]) == 2
    assert "seed=7 matches no seed of the grid" in capsys.readouterr().err


def test_a_file_without_output_writes_under_the_current_directory(tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    """With no output in the file, results go to runs/NAME under the working directory."""
    from latentfl.cli import main

    spec = write_npz(tmp_path / "toy.npz")
    write_toy_experiment(tmp_path / "exp.toml", ["fedavg"], spec, 1)
    path = tmp_path / "exp.toml"
    path.write_text(path.read_text().replace('output = "out"\n', ""))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["experiment", "--config", str(path), "--no-progress"]) == 0
    assert (work / "runs" / "exp" / "results.csv").exists()
    assert not (tmp_path / "out").exists()
    assert main(["experiment", "--config", str(path), "--no-progress", "--output", "mine"]) == 0
    assert (work / "mine" / "results.csv").exists()
    capsys.readouterr()
