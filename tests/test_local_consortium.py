"""LocalConsortium and its Supervisor: real keys, configs written as TOML, daemon processes."""

from __future__ import annotations

import os
import signal
import time

import pytest

from daemon_helpers import processes_mentioning
from latentfl.config import load_config
from latentfl.data import PartitionConfig
from latentfl.errors import ConfigError, StateError
from latentfl.platform.coordinator import CoordinatorConfig, read_journal
from latentfl.platform.crypto import load_roster
from latentfl.platform.local import LocalConsortium
from latentfl.platform.participant import ParticipantConfig
from latentfl.platform.supervisor import Supervisor, wait_until

TINY = {"model": {"name": "convnet", "options": {"width": 8, "depth": 1}},
        "local": {"epochs": 1, "batch_size": 32, "lr": 0.05, "max_steps": 4}}


def test_two_participants_finish_a_round_and_no_process_is_left(tmp_path):
    """Coordinator and 2 participant processes over CURVE finish a round; all exit 0, none left."""
    partition = PartitionConfig(scheme="dirichlet", alpha=0.5, seed=0)
    with LocalConsortium(tmp_path, 2, partition=partition,
                         coordinator={"rounds": 1, "device": "cpu", "strategy": TINY},
                         participant={"heartbeat_interval": 0.5}) as consortium:
        consortium.start()
        assert consortium.wait_finished(timeout_s=180) == 0, consortium.supervisor.tail("coordinator")
        codes = consortium.stop(grace_s=30)
    assert codes == {"coordinator": 0, "p00": 0, "p01": 0}
    assert processes_mentioning(str(consortium.root)) == []
    closed = [e for e in read_journal(consortium.state_dir / "journal.jsonl")
              if e["event"] == "round_closed"]
    assert [e["accepted"] for e in closed] == [["p00", "p01"]]
    assert set(load_roster(consortium.roster).participants) == {"p00", "p01"}


def test_written_configs_read_back_as_the_objects_that_were_started(tmp_path):
    """The TOML files the daemons read hold exactly the config objects built in code."""
    consortium = LocalConsortium(tmp_path, ["a1", "b2"], session="s", port=7999,
                                 partition=PartitionConfig(alpha=0.1),
                                 coordinator={"strategy": {"method": "feddgm"}})
    config = consortium.coordinator_config(rounds=4)
    consortium.start_participant("b2")
    consortium.stop()
    assert load_config(consortium.config_path("b2"), ParticipantConfig) == \
        consortium.participant_config("b2")
    b2 = consortium.participant_config("b2")
    assert (b2.partition.index, b2.partition.clients, b2.partition.alpha) == (1, 2, 0.1)
    assert b2.coordinator == "tcp://127.0.0.1:7999" and b2.session == "s"
    assert config.strategy.method == "feddgm" and config.min_participants == 2


def test_a_coordinator_that_cannot_start_is_reported_with_its_log(tmp_path):
    """A coordinator whose key folder is missing fails start-up with the end of its log."""
    with LocalConsortium(tmp_path, 2) as consortium:
        bad = consortium.coordinator_config(key_dir=str(tmp_path / "missing"))
        with pytest.raises(StateError, match="(?s)exited with 3 while starting.*missing does not exist"):
            consortium.start_coordinator(bad, ready_timeout_s=60)


def test_stop_terminates_a_waiting_daemon_and_returns_its_exit_code(tmp_path):
    """SIGTERM through the supervisor stops a participant cleanly (exit 130); no child is left."""
    consortium = LocalConsortium(tmp_path, 1)
    consortium.start_participant("p00")  # no coordinator: it waits, reconnecting
    supervisor = consortium.supervisor
    wait_until(lambda: "participant_started" in supervisor.log("p00").read_text(), 60,
               "the agent to start")
    with pytest.raises(StateError, match="p00 did not exit within 1s"):
        supervisor.wait("p00", timeout_s=1)
    assert supervisor.exit_codes() == {"p00": None}
    assert supervisor.stop(grace_s=30) == {"p00": 130}
    assert processes_mentioning(str(consortium.root)) == []


def test_a_hang_up_the_caller_ignores_stays_ignored_and_sigterm_still_stops(tmp_path):
    """Started under nohup (SIGHUP ignored), a supervised run survives a hang-up; SIGTERM still
    ends it through KeyboardInterrupt, and the caller's handlers come back afterwards."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sigterm = signal.getsignal(signal.SIGTERM)
    survived_hang_up = False
    try:
        with pytest.raises(KeyboardInterrupt), Supervisor(tmp_path):
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)  # a hang-up turned into an interrupt would end the block here
            survived_hang_up = True
            assert signal.getsignal(signal.SIGTERM) is not sigterm  # else the kill ends pytest
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert survived_hang_up
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is sigterm
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_name_is_started_once(tmp_path):
    """Starting a second child under a name already used is refused."""
    supervisor = Supervisor(tmp_path)
    supervisor.start("x", ["--version"])
    with pytest.raises(StateError, match="already started"):
        supervisor.start("x", ["--version"])
    assert supervisor.wait("x", timeout_s=60) == 0
    assert "latentfl" in supervisor.tail("x")
    supervisor.stop()


def test_coordinator_config_is_a_validated_dataclass(tmp_path):
    """Overrides go through the config schema: a bad value is a ConfigError naming the key."""
    consortium = LocalConsortium(tmp_path, 2)
    assert isinstance(consortium.coordinator_config(), CoordinatorConfig)
    with pytest.raises(ConfigError, match="'rounds' = 0"):
        consortium.coordinator_config(rounds=0)
