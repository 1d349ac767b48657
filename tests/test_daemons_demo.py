"""``latentfl demo``: separate processes, a table of rounds, nothing left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from daemon_helpers import processes_mentioning
from latentfl.demo import phase_line, run_demo
from latentfl.strategies.base import SyntheticImages
from latentfl.synthetic_grid import save_grid


def words(line: str) -> str:
    """A demo line with its column padding folded to single spaces."""
    return " ".join(line.split())


@pytest.mark.slow
def test_demo_runs_rounds_and_leaves_no_processes(tmp_path):
    """Two participants finish a FedAvg round over the daemons; a line per round, a table."""
    lines: list[str] = []
    workdir = tmp_path / "demo"
    assert run_demo(rounds=1, participants=2, method="fedavg", workdir=workdir, compare=False,
                    out=lines.append) == 0
    lines = [words(line) for line in lines]
    assert any(line.startswith("fedavg round 1 test acc") for line in lines)
    assert lines[1] == "fedavg starting the coordinator and 2 participant processes"
    phases = [line.split(" elapsed")[0] for line in lines if "elapsed" in line]
    closed = phases.index(next(p for p in phases if p.startswith("fedavg round 1 test acc")))
    # the round's later phases may pass between two reads of the status file (two updates made
    # durable in one group, a FedAvg sum in milliseconds); its opening never does
    assert "fedavg round 1 local training at the sites: updates 0/2" in phases[:closed]
    header = lines.index("round fedavg")
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
    lines = [words(line) for line in lines]
    assert lines.index("round feddgm fedavg prior_only") > 0
    assert any(line.startswith("fedavg round 2") for line in lines)
    assert any(line.startswith("prior_only round 2") for line in lines)
    grid = Image.open(workdir / "synthetic.png")
    # A name column and ten class columns of 3x-scaled 32-pixel images with 4-pixel gutters,
    # under a row of class names; one row per participant.
    assert grid.size == (40 + 10 * 100, 16 + 2 * 100)
    assert processes_mentioning(str(workdir)) == []


@pytest.mark.slow
def test_demo_interrupted_leaves_no_processes(tmp_path):
    """Ctrl-C (SIGINT) during the demo stops every child process."""
    workdir = tmp_path / "demo"
    # A child inherits an ignored SIGINT (pytest run in the background or under nohup); handled
    # here, it starts at the default, as the demo does in a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "latentfl", "demo", "--workdir",
                                 str(workdir), "--method", "fedavg", "--rounds", "5"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        signal.signal(signal.SIGINT, previous)
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


def test_grid_places_each_participants_first_image_of_a_class_in_that_class_column(tmp_path):
    """The grid's tile (row p01, column 'cat') is p01's first cat image, denormalised."""
    images = torch.rand(4, 3, 8, 8)
    stats = dict(mean=(0.5,) * 3, std=(0.25,) * 3)
    sets = {"p00": SyntheticImages(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), **stats),
            "p01": SyntheticImages((images - 0.5) / 0.25, torch.tensor([1, 3, 3, 0]), **stats)}
    grid = Image.open(save_grid(sets, ["plane", "car", "bird", "cat"],
                                tmp_path / "g.png", scale=1))
    cell, head, side = 8 + 4, 16, 40
    assert grid.size == (side + 4 * cell, head + 2 * cell)
    x, y = side + 3 * cell + 2, head + cell + 2
    tile = torch.tensor(np.array(grid.crop((x, y, x + 8, y + 8))), dtype=torch.float32)
    expected = (images[1].permute(1, 2, 0) * 255).round()
    assert torch.equal(tile, expected)


def test_phase_line_names_each_phase_of_a_round():
    """The demo's progress line says who is online, how many updates arrived, what runs now."""
    people = {"p00": {"online": True}, "p01": {"online": False}}
    assert phase_line({"phase": "waiting", "round": 1, "participants": people}, 5, "feddgm") == (
        "round 1  waiting for participants (1 of 5 online)")
    assert phase_line({"phase": "collecting", "round": 2, "received": ["p00"],
                       "planned": ["p00", "p01"]}, 2, "fedavg") == (
        "round 2  local training at the sites: updates 1/2")
    assert phase_line({"phase": "aggregating", "round": 2, "received": ["p00", "p01"]}, 2,
                      "feddgm").startswith("round 2  aggregating 2 updates: distilling")
    assert phase_line({"phase": "finished", "round": 4}, 2, "fedavg") is None
    assert phase_line({}, 2, "fedavg") is None
