"""``latentfl status``: every enrolled participant, counts that survive restarts, text, JSON,
HTML (checked in headless Chromium) and a quiet exit when the reader goes away; and the
consortium report built on the same counts (a declining site is not flagged)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from daemon_helpers import RawClient, Running, local_parts, make_consortium, tiny_dataset
from latentfl.cli import main
from latentfl.config import write_config
from latentfl.exitcodes import ExitCode
from latentfl.platform.coordinator import Coordinator, Journal, collect_status, render_text
from latentfl.platform.crypto import revoke_participant
from latentfl.platform.participant import Agent
from latentfl.platform.protocol import Kind, pack_json

ROOT = Path(__file__).resolve().parents[1]
#: The refused-handshake journal lines the coordinator writes (one per key, with a count).
ZAP_LINES = [{"fingerprint": "0123456789abcdef", "participant": None, "count": 3},
             {"fingerprint": "fedcba9876543210", "participant": "p03"}]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two finished rounds: p00 delivered, p01 declined its tasks, p02 never connected, p03
    revoked before the start; then the refused handshakes are journaled."""
    root = tmp_path_factory.mktemp("status")
    consortium = make_consortium(root, ["p00", "p01", "p02", "p03"])
    revoke_participant(consortium.keys, "p03")
    config = consortium.coordinator_config(rounds=2, min_participants=2,
                                           test_data="builtin:cifar10-mini", max_test=100)
    coord = Running(Coordinator(config))
    declining = RawClient(consortium, consortium.identity("p01"))
    try:
        declining.send(declining.frames(Kind.HELLO, 0, pack_json({"num_examples": 50})))
        agent = Running(Agent(consortium.participant_config("p00"),
                              data=local_parts(tiny_dataset(), 2)[0]))
        for _ in range(config.rounds):
            task = _next_task(declining)
            declining.send(declining.frames(Kind.DECLINE, task.header.round, meta={
                "reason": "budget_exceeded", "detail": "epsilon would pass max_epsilon"}))
        assert coord.join(180) == 0
        assert agent.join(30) == 0
    finally:
        declining.close()
        coord.stop()
    journal = Journal(config.state_dir / "journal.jsonl")
    for line in ZAP_LINES:
        journal.append("zap_refused", **line)
    journal.close()
    return config, write_config(root / "coordinator.toml", config)


def _next_task(client: RawClient, timeout_s: float = 120.0):
    """The next TASK, sending heartbeats meanwhile so the coordinator keeps the client online."""
    for _ in range(int(timeout_s / 2)):
        client.send(client.frames(Kind.HEARTBEAT, 0))
        task = client.recv(timeout=2.0, kind=Kind.TASK)
        if task is not None:
            return task
    raise AssertionError(f"no TASK within {timeout_s:.0f} s")


def test_every_enrolled_participant_is_listed_with_its_state(finished):
    """Never-seen and revoked participants are listed; nobody is online once it stopped."""
    config, _ = finished
    status = collect_status(config)
    assert not status["coordinator"]["running"] and status["phase"] == "finished"
    states = {pid: p["state"] for pid, p in status["participants"].items()}
    assert states == {"p00": "offline", "p01": "offline", "p02": "never-seen",
                      "p03": "revoked"}
    assert status["participants"]["p02"]["last_seen"] is None
    assert status["participants"]["p00"]["last_seen"] > 0


def test_accepted_refused_and_declined_are_counted_per_round_with_reasons(finished):
    """p00's updates count as accepted in each round; p01's declines count with their reason."""
    config, _ = finished
    people = collect_status(config)["participants"]
    assert (people["p00"]["accepted"], people["p00"]["declined"]) == (2, 0)
    assert people["p00"]["rounds"] == [{"round": r, "accepted": 1, "refused": 0,
                                        "declined": 0, "set_aside": 0, "reasons": []} for r in (1, 2)]
    assert (people["p01"]["accepted"], people["p01"]["declined"]) == (0, 2)
    assert people["p01"]["declined_reasons"] == {"budget_exceeded": 2}
    assert people["p01"]["rounds"][1]["reasons"] == ["declined: budget_exceeded"]


def test_refused_handshakes_are_counted_by_key(finished):
    """zap_refused lines add up, with their count, per key fingerprint."""
    config, _ = finished
    refused = collect_status(config)["refused_connections"]
    assert refused["attempts"] == 4
    assert [(k["fingerprint"], k["participant"], k["attempts"]) for k in refused["keys"]] == [
        ("0123456789abcdef", None, 3), ("fedcba9876543210", "p03", 1)]


def test_history_holds_the_rounds_with_their_accuracy(finished):
    """Each closed round is listed with 1 of 1 updates, 1 decline and a test accuracy."""
    config, _ = finished
    history = collect_status(config)["history"]
    assert [(r["round"], r["accepted"], r["planned"], r["declined"]) for r in history] == [
        (1, 1, 1, 1), (2, 1, 1, 1)]
    assert all(0.0 <= r["metrics"]["accuracy"] <= 1.0 for r in history)


def test_status_json_and_text_commands(finished):
    """`status --json` prints the collected dict; the text names states and the decline."""
    config, path = finished
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", "--config", str(path), "--json"]) == 0
    data = json.loads(out.getvalue())
    assert set(data["participants"]) == {"p00", "p01", "p02", "p03"}
    text = "\n".join(render_text(data))
    assert "never seen" in text and "revoked" in text
    assert "declined 2x budget_exceeded" in text and "hash chain verified" in text


def test_status_piped_into_a_closed_reader_exits_quietly(finished):
    """A reader that goes away (`| head`) gets no BrokenPipeError traceback."""
    _, path = finished
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "latentfl", "status", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before the command prints anything
    with proc.stderr:
        stderr = proc.stderr.read().decode()
    assert proc.wait(60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_status_survives_a_restart(finished, tmp_path):
    """A coordinator restarted on the same state folder shows the earlier rounds' counts, and
    is running while it serves."""
    config, _ = finished
    state = tmp_path / "state"
    shutil.copytree(config.state_dir, state)
    again = config.__class__(**{**vars(config), "state_dir": state, "rounds": 3})
    coord = Running(Coordinator(again))
    try:
        status = collect_status(again)
        assert status["coordinator"]["running"] and status["phase"] == "waiting"
        assert status["round_in_progress"]["round"] == 3
        assert status["participants"]["p00"]["accepted"] == 2
        assert status["participants"]["p01"]["declined"] == 2
        assert status["participants"]["p00"]["state"] == "offline"  # not connected now
    finally:
        coord.stop()
    assert not collect_status(again)["coordinator"]["running"]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_shows_a_declining_site_as_declined_not_flagged(finished, tmp_path, capsys):
    """p01 declined every task: listed as DECLINED with its reason; p00's updates without a
    DP ledger are flagged; the report names session, rounds and date; numbers are rounded."""
    _, path = finished
    assert main(["report", "--config", str(path), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "session test-session: rounds 1 to 2 of 2 planned" in out
    assert "p00: plain (the coordinator sees each site's update), 2 updates" in out
    report = json.loads((tmp_path / "consortium_report.json").read_text())
    people = {p["participant"]: p for p in report["participants"]}
    assert report["flagged"] == ["p00"] and report["declined"] == ["p01"]
    assert people["p01"]["flags"] == [] and people["p01"]["declined"] == {"budget_exceeded": 2}
    assert people["p02"]["flags"] == [] and people["p02"]["updates"] == 0
    assert report["scope"]["rounds_done"] == 2 and report["scope"]["session"] == "test-session"
    html = (tmp_path / "consortium_report.html").read_text()
    assert "DECLINED" in html and "declined 2 tasks (budget_exceeded x2)" in html
    assert "rounds 1 to 2 of 2 planned; generated 20" in html


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed "
                    "(`apt-get install -y chromium`; .ci/run installs it where apt works)")
def test_status_html_renders_in_headless_chromium(finished, tmp_path):
    """The page is self-contained and Chromium draws its table and the accuracy line."""
    import numpy as np

    _, path = finished
    page = tmp_path / "status.html"
    with redirect_stdout(io.StringIO()):
        assert main(["status", "--config", str(path), "--html", str(page)]) == 0
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "<svg" in html and "never seen" in html and "budget_exceeded" in html
    shot = tmp_path / "status.png"
    image = _screenshot(page, shot)
    colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3)}
    assert (0x1f, 0x6f, 0xb2) in colours  # the accuracy marker's blue was drawn
    assert len(colours) > 50  # text and tables, not a blank page


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed "
                    "(`apt-get install -y chromium`; .ci/run installs it where apt works)")
def test_consortium_report_renders_in_headless_chromium(finished, tmp_path):
    """Chromium draws the report: a red flag cell for p00, a blue DECLINED cell for p01."""
    import numpy as np

    _, path = finished
    with redirect_stdout(io.StringIO()):
        assert main(["report", "--config", str(path), "--out", str(tmp_path)]) == 0
    image = _screenshot(tmp_path / "consortium_report.html", tmp_path / "report.png")
    colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3)}
    assert (0xc0, 0x39, 0x2b) in colours  # td.flag background
    assert (0xd6, 0xe4, 0xf0) in colours  # td.status.info background: declined


def _screenshot(page: Path, shot: Path):
    from PIL import Image

    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1000,1100", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 1100)
    return image


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder; run as a plain user")
@pytest.mark.parametrize("command", ["status", "report"])
def test_an_unreadable_state_folder_gets_one_sentence_not_a_traceback(finished, tmp_path,
                                                                      command, capsys):
    """`latentfl status` and `report` by a user who may not read the daemon's state folder
    (docs' recommended set-up) exit 6 with one sentence pointing at `latentfl admin status`."""
    config, path = finished
    args = ["--out", str(tmp_path / "report")] if command == "report" else []
    config.state_dir.chmod(0o000)
    try:
        code = main([command, "--config", str(path), *args])
    finally:
        config.state_dir.chmod(0o755)
    err = capsys.readouterr().err
    assert code == ExitCode.STATE_FOLDER and "Traceback" not in err
    assert (f"cannot read {config.state_dir}: permission denied (run as the daemon's user or "
            "use `latentfl admin status`)") in err


@pytest.mark.parametrize("command", ["report", "export-model"])
def test_report_before_any_run_says_so_and_exits_6(tmp_path, command, capsys):
    """`latentfl report` (and `export-model`) on a state folder no coordinator has run in
    exits 6 (the state folder holds nothing to read), not 4 (corrupt), with one sentence."""
    consortium = make_consortium(tmp_path, ["p00", "p01"])
    path = write_config(tmp_path / "coordinator.toml", consortium.coordinator_config())
    out = tmp_path / ("report" if command == "report" else "model.safetensors")
    code = main([command, "--config", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == ExitCode.STATE_FOLDER and "Traceback" not in err
    assert f"no run yet in {tmp_path / 'state'}: start the coordinator first" in err
    assert not (tmp_path / "state").exists()
