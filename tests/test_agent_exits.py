"""Agents that stop when they should: a refused key or a wrong session ends the agent within
seconds with one sentence and its exit code; SIGTERM / SIGINT stop an agent within 2 s of
wall time from the signal, whatever it is doing (start-up has its own, generous deadline)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from daemon_helpers import STRATEGY, Running, local_parts, make_consortium, tiny_dataset
from latentfl.config import write_config
from latentfl.errors import NotEnrolledError, RefusedError
from latentfl.exitcodes import ExitCode
from latentfl.platform.coordinator import Coordinator, read_journal
from latentfl.platform.crypto import curve_fingerprint, revoke_participant
from latentfl.platform.local import free_port
from latentfl.platform.participant import Agent
from latentfl.platform.supervisor import wait_until

STOP_S = 2.0  # the promise: a signal at any moment ends the agent within 2 s


def stop_limit() -> float:
    """STOP_S on a box with a core per runnable process; stretched by how oversubscribed the
    cores are (a box running three jobs per core gives the agent a third of one), so a busy
    box does not fail a correct agent. Unloaded, the stops measure 0.3-0.5 s."""
    return STOP_S * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
STARTUP_S = 240  # importing torch and reaching the first task on a loaded 2-core box


@pytest.fixture(scope="module")
def parts():
    return local_parts(tiny_dataset(n_train=100), 2)


@pytest.fixture
def consortium(tmp_path):
    return make_consortium(tmp_path, ["p00", "p01"])


def _ends_within(agent: Agent, seconds: float) -> BaseException:
    """Run ``agent`` until it ends by itself; the error it ended with, within ``seconds``."""
    running, started = Running(agent), time.monotonic()
    try:
        running.join(seconds)
    except BaseException as exc:  # noqa: BLE001 - the error is what the test checks
        assert time.monotonic() - started < seconds
        return exc
    finally:
        agent.stop()
    raise AssertionError(f"the agent still ran after {seconds}s")


def test_revoked_agent_exits_within_10s(consortium, parts):
    """A participant whose key is revoked ends with NotEnrolledError naming its key, and the
    coordinator journals the refused handshake with the participant's id."""
    config = consortium.coordinator_config()
    coord = Running(Coordinator(config))
    try:
        revoke_participant(consortium.keys, "p01")
        wait_until(lambda: "p01" not in coord.daemon._auth.allowed_ids(), 10, "the revocation")
        error = _ends_within(Agent(consortium.participant_config("p01"), data=parts[1]), 10)
    finally:
        coord.stop()
    assert isinstance(error, NotEnrolledError) and "revoked or not enrolled" in str(error)
    fingerprint = curve_fingerprint(consortium.identity("p01").curve_public)
    assert fingerprint in str(error)
    zap = [e for e in read_journal(config.state_dir / "journal.jsonl")
           if e["event"] == "zap_refused"]
    assert zap and zap[0]["participant"] == "p01" and zap[0]["fingerprint"] == fingerprint


def test_agent_of_another_session_exits_within_10s(consortium, parts):
    """An agent configured for another session ends with RefusedError (exit 8)."""
    coord = Running(Coordinator(consortium.coordinator_config()))
    try:
        agent = Agent(consortium.participant_config("p00", session="other-session"),
                      data=parts[0])
        error = _ends_within(agent, 10)
    finally:
        coord.stop()
    assert isinstance(error, RefusedError) and "runs another session" in str(error)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_stuck_agent_stops_within_2s_of_a_signal(consortium, tmp_path, stop):
    """An agent whose coordinator never answers (its sends have no connection to go to) exits
    with 130 within 2 s of SIGTERM or SIGINT."""
    config = consortium.participant_config("p00", coordinator=f"tcp://127.0.0.1:{free_port()}")
    path = write_config(tmp_path / "p00.toml", config)
    log = tmp_path / "p00.log"
    # 1.5 s after start: inside a send that has nowhere to go
    code, took = _run_and_signal(path, log, "participant_started", 1.5, stop)
    assert code == ExitCode.INTERRUPTED, log.read_text()[-2000:]
    assert took < stop_limit(), f"exited {took:.2f} s after the signal"


def _run_and_signal(path, log, marker: str, settle: float,
                    stop: signal.Signals) -> tuple[int, float]:
    """Start an agent on config ``path``, wait for ``marker`` in its log and ``settle`` s more,
    send ``stop``: the exit code and the wall time from the signal to the exit. A process still
    running 20 s later fails the test rather than hanging it, and is killed whatever happened."""
    proc = subprocess.Popen([sys.executable, "-m", "latentfl", "participant", "--config",
                             str(path)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: marker in log.read_text(), STARTUP_S, f"{marker} in the agent's log")
        time.sleep(settle)
        proc.send_signal(stop)
        started = time.monotonic()
        code = proc.wait(20)
        return code, time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp_sgd"])
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_agent_stops_cleanly_mid_training(consortium, tmp_path, stop, dp):
    """SIGTERM or SIGINT while the agent trains ends it with 130 within 2 s, never a native
    crash (a training thread torn down under the exiting interpreter)."""
    coord = Running(Coordinator(consortium.coordinator_config(
        min_participants=1, strategy={**STRATEGY, "local": {
            "epochs": 50, "batch_size": 64, "lr": 0.05}, "model": {"name": "convnet", "options": {"width": 64, "depth": 3}}})))
    privacy = {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0}} if dp else {}
    path = write_config(tmp_path / "p00.toml", consortium.participant_config(
        "p00", state_dir=tmp_path / "p00-state", privacy=privacy))
    log = tmp_path / "p00.log"
    try:
        # 1 s after its first task: inside local training
        code, took = _run_and_signal(path, log, "task_received", 1.0, stop)
    finally:
        coord.stop()
    assert code == ExitCode.INTERRUPTED, log.read_text()[-2000:]
    assert took < stop_limit(), f"exited {took:.2f} s after the signal"
    assert "trained" not in log.read_text().split("task_received", 1)[1]


def test_revoked_agent_process_exits_7(consortium, tmp_path):
    """A participant process whose key is revoked prints the sentence and exits 7 (not
    enrolled), never a native crash."""
    coord = Running(Coordinator(consortium.coordinator_config()))
    path = write_config(tmp_path / "p01.toml", consortium.participant_config("p01"))
    try:
        revoke_participant(consortium.keys, "p01")
        wait_until(lambda: "p01" not in coord.daemon._auth.allowed_ids(), 10, "the revocation")
        proc = subprocess.run([sys.executable, "-m", "latentfl", "participant", "--config",
                               str(path)], capture_output=True, text=True, timeout=240)
    finally:
        coord.stop()
    assert proc.returncode == ExitCode.NOT_ENROLLED, proc.stderr[-2000:]
    assert "revoked or not enrolled" in proc.stderr
