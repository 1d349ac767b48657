"""``latentfl demo``: separate processes, a table of rounds, nothing left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from daemon_helpers import processes_mentioning
from latentfl.demo import run_demo


@pytest.mark.slow
def test_demo_runs_rounds_and_leaves_no_processes(tmp_path):
    """Two participants finish a FedAvg round over the daemons; a line per round, a table."""
    lines: list[str] = []
    workdir = tmp_path / "demo"
    assert run_demo(rounds=1, participants=2, method="fedavg", workdir=workdir, compare=False,
                    out=lines.append) == 0
    assert any(line.startswith("fedavg  round 1  test acc") for line in lines)
    header = lines.index("round    fedavg")
    assert lines[header + 1].split()[0] == "1" and lines[header + 1].endswith("%")
    assert (workdir / "state" / "journal.jsonl").exists()
    assert processes_mentioning(str(workdir)) == []


@pytest.mark.slow
def test_feddgm_demo_through_the_daemons(tmp_path):
    """FedDGM runs 2 rounds over the daemons, FedAvg beside it; a labelled grid is saved."""
    lines: list[str] = []
    workdir = tmp_path / "demo"
    assert run_demo(rounds=2, participants=2, method="feddgm", workdir=workdir,
                    out=lines.append) == 0
    assert lines.index("round    feddgm    fedavg") > 0
    assert any(line.startswith("fedavg  round 2") for line in lines)
    grid = Image.open(workdir / "synthetic.png")
    # A name column and ten class columns of 3x-scaled 32-pixel images with 4-pixel gutters,
    # under a row of class names; one row per participant.
    assert grid.size == (40 + 10 * 100, 16 + 2 * 100)
    assert processes_mentioning(str(workdir)) == []


@pytest.mark.slow
def test_demo_interrupted_leaves_no_processes(tmp_path):
    """Ctrl-C (SIGINT) during the demo stops every child process."""
    workdir = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "latentfl", "demo", "--workdir", str(workdir),
                             "--method", "fedavg", "--rounds", "5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(processes_mentioning(str(workdir))) < 4:
            time.sleep(0.2)
        assert len(processes_mentioning(str(workdir))) >= 4
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert processes_mentioning(str(workdir)) == []
