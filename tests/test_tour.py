"""The README's tour runs as written on a fresh copy of the examples, in a temporary folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latentfl.platform.local import free_port

ROOT = Path(__file__).resolve().parents[1]
#: Tour commands left to their own tests: minutes of CPU, or a file the reader supplies.
SKIPPED = ("latentfl simulate", "latentfl experiment", "latentfl audit", "latentfl generator")


def tour_commands() -> list[str]:
    """The lines of the README's tour code block, comments stripped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## A tour.*?```bash\n(.*?)```", text, flags=re.S).group(1)
    return [re.split(r"\s{2,}#", line)[0].strip() for line in block.splitlines()
            if line.startswith("latentfl ")]


def test_tour_lists_the_daemons_and_status():
    """The tour enrols the participants the coordinator example waits for, one agent each."""
    commands = tour_commands()
    init = next(c for c in commands if c.startswith("latentfl keys init"))
    enrolled = shlex.split(init)[shlex.split(init).index("--participants") + 1:]
    agents = [c for c in commands if c.startswith("latentfl participant")]
    assert len(agents) == len(enrolled) == 2
    example = (ROOT / "examples" / "coordinator.toml").read_text()
    assert re.search(rf"^min_participants = {len(enrolled)}\b", example, flags=re.M)
    assert "--dir consortium " in init and '"../consortium/roster.toml"' in example


@pytest.mark.slow
def test_tour_runs_as_written(tmp_path):
    """Each tour command, run in a folder holding only a copy of examples/, succeeds; the
    daemons finish their round and status, the status page and the report show it."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    port = free_port()
    for path in (tmp_path / "examples").glob("*.toml"):  # a free port, one small round
        text = path.read_text().replace(":7700", f":{port}").replace("width = 64", "width = 8")
        text = re.sub(r"^max_test = 0", "max_test = 100", text, flags=re.M)
        path.write_text(re.sub(r"^rounds = \d+", "rounds = 1", text, flags=re.M))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    daemons: list[subprocess.Popen] = []
    logs = []

    def run(command: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "latentfl", *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        return done

    try:
        for command in tour_commands():
            if command.startswith(SKIPPED):
                continue
            if command.endswith("&"):
                argv = [sys.executable, "-m", "latentfl", *shlex.split(command[:-1])[1:]]
                log = (tmp_path / f"daemon{len(daemons)}.log").open("w")
                logs.append(log)
                daemons.append(subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log,
                                                stderr=subprocess.STDOUT))
                continue
            if command.startswith("latentfl status") and daemons:
                assert daemons[0].wait(600) == 0, (tmp_path / "daemon0.log").read_text()[-3000:]
                for agent in daemons[1:]:
                    assert agent.wait(60) == 0
            run(command)
    finally:
        for proc in daemons:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    status = json.loads(run("latentfl status --config examples/coordinator.toml --json").stdout)
    assert status["phase"] == "finished" and status["rounds_done"] == 1
    assert {p: v["accepted"] for p, v in status["participants"].items()} == {
        "hospital-a": 1, "hospital-b": 1}
    assert (tmp_path / "status.html").exists()
    assert (tmp_path / "report" / "consortium_report.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "agent-state", "consortium", "daemon0.log", "daemon1.log", "daemon2.log", "examples",
        "report", "state", "status.html"]
    first = (tmp_path / "daemon0.log").read_text().splitlines()[0]
    assert "listening on tcp://127.0.0.1" in json.loads(first)["summary"]
