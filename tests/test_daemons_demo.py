"""``latentfl demo``: separate processes, a table of rounds, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentfl.demo import run_demo


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_demo_runs_rounds_and_leaves_no_processes(tmp_path):
    """Two participants finish a round; the table, state and journal are reported."""
    lines: list[str] = []
    workdir = tmp_path / "demo"
    assert run_demo(rounds=1, participants=2, method="fedavg", workdir=workdir,
                    out=lines.append) == 0
    text = "\n".join(lines)
    assert "round  participants" in text and "journal:" in text
    row = next(line for line in lines if line.strip().startswith("1 "))
    assert row.split()[1] == "2"
    assert (workdir / "state" / "journal.jsonl").exists()
    assert _processes_mentioning(str(workdir)) == []


@pytest.mark.slow
def test_feddgm_demo_through_the_daemons(tmp_path):
    """FedDGM's demo runs 2 rounds over the daemons, compares with FedAvg, saves a grid."""
    from PIL import Image

    lines: list[str] = []
    workdir = tmp_path / "demo"
    assert run_demo(rounds=2, participants=2, method="feddgm", workdir=workdir,
                    out=lines.append) == 0
    text = "\n".join(lines)
    assert "FedAvg (convnet-16)" in text and "synthetic images of the last round" in text
    grid = Image.open(workdir / "synthetic.png")
    assert grid.size[0] == 10 * 34 + 2  # ten classes of 32-pixel images with 2-pixel padding
    assert _processes_mentioning(str(workdir)) == []


@pytest.mark.slow
def test_demo_interrupted_leaves_no_processes(tmp_path):
    """Ctrl-C (SIGINT) during the demo stops every child process."""
    workdir = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "latentfl", "demo", "--workdir", str(workdir),
                             "--method", "fedavg", "--rounds", "5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_processes_mentioning(str(workdir))) < 4:
            time.sleep(0.2)
        assert len(_processes_mentioning(str(workdir))) >= 4
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert _processes_mentioning(str(workdir)) == []
