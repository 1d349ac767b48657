"""Run an experiment grid cell by cell, resumably.

Layout under the experiment's ``output`` folder::

    results.csv            one row per finished cell (written after every cell, atomically);
                           rows of cells outside the grid being run (a part run with
                           ``--only``, a method since removed) are kept
    table.md               mean +/- std over seeds of final-round and best-round test accuracy
    convergence.png        test accuracy against round, one line per method, one panel per
                           (architecture, alpha)
    runs/<cell>/rounds.jsonl   the simulator's per-round records
    runs/<cell>/cell.json      the cell's full simulation config
    runs/<cell>/row.json       the cell's results row, written when the cell finishes

A cell counts as finished when results.csv or its row.json has its row, the row's config digest
matches the cell's config, and its rounds.jsonl holds one complete record per round. Finished
cells are not run again; an interrupted or changed cell is run again from its first round.

Over ranks (``latentfl experiment --ranks K``, or torchrun): every rank computes the same grid
and the same split of the unfinished cells (:func:`latentfl.sharding.balance` on rounds times
participants), runs its share and writes each finished cell's row.json; after a barrier rank 0
alone writes results.csv, table.md and the plot. A cell finished by any rank is never rerun.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentfl.config import to_dict
from latentfl.data import load_dataset
from latentfl.durable import write_atomic
from latentfl.errors import DataError
from latentfl.experiment._files import read_rounds
from latentfl.experiment.config import Cell, ExperimentConfig, grid, output_folder
from latentfl.experiment.report import write_plot, write_table
from latentfl.log import get_logger
from latentfl.sharding import balance
from latentfl.simulate import RoundRecord, run_simulation

log = get_logger("experiment")

ROW_FILE = "row.json"
RESULT_FIELDS = ("cell", "method", "alpha", "architecture", "seed", "rounds", "final_accuracy",
                 "best_accuracy", "best_round", "seconds", "seconds_per_round", "config_digest",
                 "scenario", "backdoor_success", "attackers_set_aside",
                 "server_seconds_per_round")
#: columns only robustness grids fill (empty otherwise), and one rows of older grids lack
_OPTIONAL_FLOATS = ("backdoor_success", "attackers_set_aside", "server_seconds_per_round")


@dataclass(frozen=True)
class ExperimentResult:
    """What one invocation did: rows of every finished cell, and which cells it ran now."""

    rows: list[dict[str, Any]]
    ran: list[str]
    skipped: list[str]
    output: Path
    infeasible: dict[str, str]


def cell_digest(cell: Cell) -> str:
    """Digest of everything that determines a cell's numbers (the output folder excluded)."""
    data = to_dict(cell.simulation)
    data.pop("output", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of results.csv with numbers parsed; an absent file has none."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("alpha", "final_accuracy", "best_accuracy", "seconds", "seconds_per_round"):
            row[key] = float(row[key])
        for key in ("seed", "rounds", "best_round"):
            row[key] = int(row[key])
        row.setdefault("scenario", "")
        for key in _OPTIONAL_FLOATS:
            row[key] = float(row[key]) if row.get(key) not in (None, "") else None
    return rows


def finished_row(cell: Cell, row: dict[str, Any] | None) -> dict[str, Any] | None:
    """The cell's row if the cell is finished: ``row`` (from results.csv) or its row.json."""
    if is_finished(cell, row):
        return row
    path = cell.run_dir / ROW_FILE
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if is_finished(cell, saved):
            return saved
    return None


def is_finished(cell: Cell, row: dict[str, Any] | None) -> bool:
    """True when ``row`` belongs to this exact cell config and its round records are complete."""
    if row is None or row.get("config_digest") != cell_digest(cell):
        return False
    records = read_rounds(cell.run_dir / "rounds.jsonl")
    return [r.get("round") for r in records] == list(range(1, cell.simulation.rounds + 1))


@dataclass(frozen=True)
class Ranks:
    """This process's place among the processes sharing one grid, and how to wait for them."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None


def run_experiment(
    config: ExperimentConfig,
    *,
    progress: bool = True,
    on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
    ranks: Ranks = Ranks(),
) -> ExperimentResult:
    """Run every unfinished cell of ``config``'s grid (this rank's share of them); then write
    results.csv, table.md and the plot (rank 0, once every rank is done)."""
    from tqdm import tqdm


    out = output_folder(config)
    out.mkdir(parents=True, exist_ok=True)
    cells = grid(config)
    old = {row["cell"]: row for row in read_results(out / "results.csv")}
    rows = {c.key: row for c in cells if (row := finished_row(c, old.get(c.key))) is not None}
    # rows of cells outside this grid (another part run with --only) stay in results.csv
    outside = [row for key, row in old.items() if key not in {c.key for c in cells}]
    todo = [c for c in cells if c.key not in rows]
    skipped = [c.key for c in cells if c.key in rows]
    ran: list[str] = []
    infeasible: dict[str, str] = {}
    if todo:
        dataset = _load_dataset(config.simulation.data)
        infeasible = partition_problems(todo, dataset)
        todo = [c for c in todo if c.key not in infeasible]
        share = balance([c.simulation.rounds * c.simulation.participants for c in todo],
                        ranks.world)[ranks.rank]
        todo = [todo[i] for i in share]
        total = sum(c.simulation.rounds for c in todo)
        with tqdm(total=total, unit="round", disable=not progress, dynamic_ncols=True) as bar:
            for cell in todo:
                bar.set_description(cell.key)
                row = run_cell(cell, dataset, on_round=lambda rec: _tick(bar, rec))
                rows[cell.key] = row
                ran.append(cell.key)
                if ranks.world == 1:  # several ranks: rank 0 writes once, after the barrier
                    ordered = [rows[c.key] for c in cells if c.key in rows]
                    write_results(out / "results.csv", ordered + outside)
                    write_table(out / "table.md", config, ordered, infeasible)
                if on_cell is not None:
                    on_cell(cell, row)
    ranks.barrier()
    if ranks.world > 1:  # the cells the other ranks ran
        for cell in cells:
            if cell.key not in rows and (row := finished_row(cell, None)) is not None:
                rows[cell.key] = row
        ran = [c.key for c in cells if c.key in rows and c.key not in skipped]
    ordered = [rows[c.key] for c in cells if c.key in rows]
    if ranks.rank != 0:
        return ExperimentResult(ordered, ran, skipped, out, infeasible)
    write_results(out / "results.csv", ordered + outside)
    write_table(out / "table.md", config, ordered, infeasible)
    write_plot(out / "convergence.png", cells, rows)
    log.info("experiment_done", cells=len(cells), ran=len(ran), skipped=len(skipped),
             infeasible=len(infeasible), output=str(out))
    return ExperimentResult(ordered, ran, skipped, out, infeasible)


def partition_problems(cells: list[Cell], dataset) -> dict[str, str]:
    """Cells whose partition cannot be drawn (e.g. a tiny alpha over many participants), with
    the partitioner's reason; each distinct partition is tried once."""

    tried: dict[tuple, str | None] = {}
    out = {}
    for cell in cells:
        sim = cell.simulation
        p = sim.partition
        key = (sim.participants, p.scheme, p.seed, p.alpha, p.min_size, p.classes_per_client)
        if key not in tried:
            try:
                p.split(dataset.train.y, sim.participants)
                tried[key] = None
            except DataError as exc:
                tried[key] = str(exc)
                log.warning("partition_infeasible", alpha=p.alpha, seed=p.seed, reason=str(exc))
        if tried[key] is not None:
            out[cell.key] = tried[key]
    return out


def run_cell(cell: Cell, dataset, *, on_round: Callable[[RoundRecord], None] | None = None
             ) -> dict[str, Any]:
    """Run one cell's federation and return its results row."""
    sim = cell.simulation
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(cell.run_dir / "cell.json", json.dumps(to_dict(sim), indent=2, sort_keys=True))
    result = run_simulation(sim, dataset=dataset, on_round=on_round)
    accuracies = [r.accuracy for r in result.history]
    best = max(range(len(accuracies)), key=lambda i: accuracies[i])
    seconds = sum(r.seconds for r in result.history)
    row = {
        "cell": cell.key,
        "method": cell.method,
        "alpha": cell.alpha,
        "architecture": cell.architecture,
        "seed": cell.seed,
        "rounds": len(result.history),
        "final_accuracy": accuracies[-1],
        "best_accuracy": accuracies[best],
        "best_round": result.history[best].round,
        "seconds": seconds,
        "seconds_per_round": seconds / len(result.history),
        "server_seconds_per_round": sum(r.metrics["server_seconds"] for r in result.history)
        / len(result.history),
        "config_digest": cell_digest(cell),
        "scenario": cell.scenario,
        "backdoor_success": result.history[-1].metrics.get("backdoor_success"),
        # attackers' updates set aside over the whole run (0 when there is no attack)
        "attackers_set_aside": sum(r.metrics.get("attackers_set_aside", 0.0)
                                   for r in result.history) if sim.attackers else None,
    }
    write_atomic(cell.run_dir / ROW_FILE, json.dumps(row, indent=2))
    return row


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """results.csv, replaced atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RESULT_FIELDS)
    for row in rows:
        writer.writerow([_csv_value(row.get(k)) for k in RESULT_FIELDS])
    write_atomic(path, buffer.getvalue())


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _tick(bar, record: RoundRecord) -> None:
    bar.update(1)
    if record.accuracy is not None:
        bar.set_postfix(round=record.round, acc=f"{100 * record.accuracy:.1f}%")


def _load_dataset(spec: str):

    dataset = load_dataset(spec)
    if dataset.test is None:
        raise DataError(f"dataset {spec!r} has no test split; the experiment reports test "
                        "accuracy, so expected a dataset with train/ and test/.")
    return dataset


__all__ = ["RESULT_FIELDS", "ROW_FILE", "ExperimentResult", "Ranks", "cell_digest",
           "finished_row", "is_finished", "read_results", "run_cell", "run_experiment",
           "write_results"]
