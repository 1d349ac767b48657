"""scripts/gpu_check.sh: its dry run does every step at toy size on the CPU and reports each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
STEPS = ("preflight", "distill_speed", "local_training", "pytest_gpu", "feddgm_cell",
         "dynafed_cell")


def run_script(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_dry_run_passes_every_step_and_writes_the_summary(tmp_path: Path) -> None:
    """--dry-run runs all six steps OK and leaves summary.md, a log per step and the cells' tar."""
    done = run_script("--dry-run", out=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "summary.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in summary.splitlines() if line.startswith("| ") and "---" not in line}
    assert {step: rows.get(step) for step in STEPS} == dict.fromkeys(STEPS, "OK")
    assert "participant-it/s" in summary and "rounds, last" in summary
    assert "| dynafed |" in summary and "| feddgm |" in summary  # the cells' table.md
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{step}.log" for step in STEPS] + ["summary.md", "experiments.tar.gz"])
    assert "| dynafed_cell | OK |" in done.stdout  # the table is printed at the end too


def test_unknown_argument_is_refused(tmp_path: Path) -> None:
    """An argument other than --dry-run stops the script at once with exit code 2."""
    done = run_script("--dryrun", out=tmp_path)
    assert done.returncode == 2
    assert "unknown argument '--dryrun'; expected --dry-run or nothing" in done.stderr
