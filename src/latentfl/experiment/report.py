"""table.md and convergence.png from an experiment's finished cells."""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentfl.durable import write_atomic
from latentfl.experiment._files import read_rounds
from latentfl.experiment.config import Cell, ExperimentConfig, cell_key, output_folder


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def format_cell(values: Sequence[float], seeds: int) -> str:
    """``mean ± std`` in percent; the count of seeds is shown when some are missing."""
    if not values:
        return "-"
    mean, std = mean_std([100 * v for v in values])
    text = f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"
    return text if len(values) == seeds else f"{text} (n={len(values)})"


def render_table(config: ExperimentConfig, rows: Sequence[dict[str, Any]],
                 infeasible: dict[str, str] | None = None) -> str:
    """The Markdown report: final-round and best-round accuracy tables, then time per round.

    Cells in ``infeasible`` (key -> reason) show as "no partition", with the reasons below.
    """

    infeasible = infeasible or {}
    sim = config.simulation
    archs = list(dict.fromkeys(r["architecture"] for r in rows)) or ["-"]
    by_key: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_key[(r["method"], r.get("scenario", ""), r["alpha"], r["architecture"])].append(r)
    seeds = len(config.seeds)
    lines = [
        f"# Experiment: {output_folder(config).name}",
        "",
        f"Data `{sim.data}`; {sim.participants} participants, {100 * sim.fraction:g}% sampled per "
        f"round, {sim.rounds} rounds; partition `{sim.partition.scheme}` (seed "
        f"{sim.partition.seed}), Dirichlet alpha per column. Test accuracy in %, "
        f"mean ± sample std over seeds {list(config.seeds)} (n shown when seeds are missing).",
    ]
    header = "| method | " + " | ".join(f"alpha = {a:g}" for a in config.alphas) + " |"
    rule = "| --- |" + " --- |" * len(config.alphas)
    tables = [
        ("Final-round test accuracy (%)", "final_accuracy", "Accuracy after the last round."),
        ("Best-round test accuracy (%)", "best_accuracy",
         "Maximum over rounds, chosen on the test set itself, so optimistic."),
    ]
    if any(r.get("backdoor_success") is not None for r in rows):
        tables.append(("Backdoor success rate (%)", "backdoor_success",
                       "Share of triggered test images of other classes the final global model "
                       "assigns to the attackers' target class (backdoor scenarios only)."))
    for title, field, note in tables:
        for arch in archs:
            lines += ["", f"## {title}, global model {arch}", "", note, "", header, rule]
            for method in config.methods:
                for label in scenario_labels(config, method):
                    cells = [format_cell([r[field] for r in by_key[(method, label, a, arch)]
                                          if r.get(field) is not None], seeds)
                             for a in config.alphas]
                    cells = [
                        "no partition" if text == "-" and any(
                            cell_key(method, a, arch, s, label) in infeasible
                            for s in config.seeds)
                        else text for text, a in zip(cells, config.alphas, strict=True)]
                    name = f"{method} / {label}" if label else method
                    lines.append(f"| {name} | " + " | ".join(cells) + " |")
    reasons = sorted(set(infeasible.values()))
    if reasons:
        lines += ["", "No partition: the partitioner could not draw these cells' data split:", ""]
        lines += [f"- {r}" for r in reasons]
    lines += ["", "## Time", "", "Wall-clock seconds per round (local training of every sampled "
              "participant, server work and evaluation) and the server's part of it (configuring "
              "and aggregating the round), mean over the method's finished cells.",
              "", "| method | global model | s / round | server s / round | rounds / min |",
              "| --- | --- | --- | --- | --- |"]
    for method in config.methods:
        for arch in archs:
            mine = [r for r in rows if r["method"] == method and r["architecture"] == arch]
            if mine:
                s = sum(r["seconds_per_round"] for r in mine) / len(mine)
                server = [r["server_seconds_per_round"] for r in mine
                          if r.get("server_seconds_per_round") is not None]
                server_text = f"{sum(server) / len(server):.2f}" if server else "-"
                lines.append(f"| {method} | {arch} | {s:.2f} | {server_text} | {60 / s:.1f} |")
    return "\n".join(lines) + "\n"


def scenario_labels(config: ExperimentConfig, method: str) -> list[str]:
    """The scenario labels ``method`` runs under ([""] for a grid without scenarios)."""
    return [sc.label for sc in config.scenarios if sc.runs(method)] or [""]


def write_table(path: Path, config: ExperimentConfig, rows: Sequence[dict[str, Any]],
                infeasible: dict[str, str] | None = None) -> None:
    write_atomic(path, render_table(config, rows, infeasible))


def write_plot(path: Path, cells: Sequence[Cell], rows: dict[str, dict[str, Any]]) -> None:
    """Test accuracy against round: one panel per (architecture, alpha), one line per method
    (mean over seeds, shaded +/- one std when there are several)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves: dict[tuple, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for cell in cells:
        if cell.key not in rows:
            continue
        acc = [100 * r["accuracy"] for r in read_rounds(cell.run_dir / "rounds.jsonl")
               if r.get("accuracy") is not None]
        name = f"{cell.method} / {cell.scenario}" if cell.scenario else cell.method
        curves[(cell.architecture, cell.alpha)][name].append(acc)
    archs = list(dict.fromkeys(c.architecture for c in cells))
    alphas = list(dict.fromkeys(c.alpha for c in cells))
    fig = Figure(figsize=(4.2 * len(alphas), 3.4 * len(archs)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(archs), len(alphas), squeeze=False, sharey=True)
    for i, arch in enumerate(archs):
        for j, alpha in enumerate(alphas):
            ax = axes[i][j]
            for method, runs in curves[(arch, alpha)].items():
                n = min(len(r) for r in runs)
                if n == 0:
                    continue
                stats = [mean_std([r[k] for r in runs]) for k in range(n)]
                xs = list(range(1, n + 1))
                mean = [m for m, _ in stats]
                (line,) = ax.plot(xs, mean, label=method, linewidth=1.5)
                if len(runs) > 1:
                    ax.fill_between(xs, [m - s for m, s in stats], [m + s for m, s in stats],
                                    color=line.get_color(), alpha=0.2, linewidth=0)
            ax.set_title(f"{arch}, alpha = {alpha:g}", fontsize=10)
            ax.set_xlabel("round")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("test accuracy (%)")
            if ax.has_data():
                ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())


__all__ = ["format_cell", "mean_std", "render_table", "scenario_labels", "write_plot",
           "write_table"]
