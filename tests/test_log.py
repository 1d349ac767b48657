"""One log set-up for every command: console lines on a terminal, JSON lines otherwise or on
request, a JSON copy in ``--log-file``, the standard ``logging`` module routed the same way,
and the daemon's summary lines per round phase."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os

import pytest
import structlog

from latentfl.cli import HelpWithDefaults, all_parsers, build_parser, main
from latentfl.data import PartitionConfig
from latentfl.log import configure_logging, get_logger
from latentfl.platform.local import LocalConsortium

TINY = {"model": {"name": "convnet", "options": {"width": 8, "depth": 1}},
        "local": {"epochs": 1, "batch_size": 32, "lr": 0.05, "max_steps": 4}}


@pytest.fixture(autouse=True)
def _restore_logging():
    yield
    configure_logging("json", stream=io.StringIO())  # closes a --log-file of the test
    structlog.reset_defaults()
    logging.getLogger().handlers = []


def test_json_format_writes_one_object_per_line():
    """--log-format json: each event is a JSON object with event, level, time and fields."""
    out = io.StringIO()
    configure_logging("json", stream=out)
    get_logger("coordinator").info("round_opened", round=3, summary="round 3 opened")
    (line,) = out.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "round_opened" and event["round"] == 3
    assert event["summary"] == "round 3 opened" and event["level"] == "info"
    assert event["component"] == "coordinator" and event["timestamp"].endswith("Z")


def test_console_format_leads_with_the_summary():
    """--log-format console: a readable line that starts the event with its summary."""
    out = io.StringIO()
    configure_logging("console", stream=out)
    get_logger("coordinator").info("round_closed", round=1, summary="round 1 closed in 2.0 s")
    line = out.getvalue()
    assert "round_closed: round 1 closed in 2.0 s" in line and "round=1" in line
    assert not line.lstrip().startswith("{")


def test_auto_format_follows_the_terminal():
    """auto: JSON into a pipe or file, console lines into a terminal."""
    piped = io.StringIO()
    configure_logging("auto", stream=piped)
    get_logger("x").info("hello")
    assert json.loads(piped.getvalue())["event"] == "hello"
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as tty:
        configure_logging("auto", stream=tty)
        get_logger("x").info("hello")
        tty.flush()
        shown = os.read(leader, 4096).decode()
    os.close(leader)
    assert "hello" in shown and not shown.lstrip().startswith("{")


def test_log_file_gets_json_while_the_stream_gets_console(tmp_path):
    """--log-file appends JSON lines beside the console output; stdlib records go there too."""
    out, path = io.StringIO(), tmp_path / "run.log"
    configure_logging("console", stream=out, log_file=path)
    get_logger("demo").info("round_opened", round=1)
    logging.getLogger("latentfl.zap").warning("ZAP refused a key")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["event"] for e in lines] == ["round_opened", "ZAP refused a key"]
    assert lines[1]["component"] == "latentfl.zap" and lines[1]["level"] == "warning"
    assert "ZAP refused a key" in out.getvalue()


def test_unwritable_log_file_is_one_clear_error(tmp_path, capsys):
    """A --log-file that cannot be opened stops the command with exit status 2."""
    code = main(["--log-file", str(tmp_path / "missing" / "x.log"), "data", "inspect",
                 "builtin:cifar10-mini"])
    assert code == 2
    assert "--log-file" in capsys.readouterr().err


def test_every_option_has_help_and_shows_its_default():
    """Every argument of every command has help text; an option with a default names it."""
    for parser in all_parsers(build_parser()):
        formatter = HelpWithDefaults(parser.prog)
        for action in parser._actions:
            if action.dest in ("help", "version") or isinstance(action,
                                                                 argparse._SubParsersAction):
                continue
            where = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where} has no help text"
            if action.option_strings and not (action.default is None or action.default is False
                                              or action.default == []
                                              or action.default == argparse.SUPPRESS):
                assert "default" in formatter._get_help_string(action), where
        parser.format_help()  # every %(default)s placeholder expands


def test_daemon_logs_json_with_a_startup_summary_and_round_phases(tmp_path):
    """A coordinator writing into a file logs JSON: where it listens, what it waits for, and
    one line per round phase (opened, updates n/m, aggregating, closed with accuracy)."""
    with LocalConsortium(tmp_path, 2, partition=PartitionConfig(scheme="iid", seed=0),
                         coordinator={"rounds": 1, "device": "cpu", "strategy": TINY,
                                      "test_data": "builtin:cifar10-mini", "max_test": 50},
                         participant={"heartbeat_interval": 0.5}) as consortium:
        consortium.start()
        assert consortium.wait_finished(timeout_s=180) == 0
    events = [json.loads(line) for line in
              consortium.supervisor.log("coordinator").read_text().splitlines()
              if line.startswith("{")]
    summaries = {e["event"]: e.get("summary", "") for e in events}
    assert summaries["coordinator_started"].startswith(f"listening on {consortium.endpoint}")
    assert "waits for 2 of 2 enrolled participants" in summaries["coordinator_started"]
    assert summaries["round_opened"].startswith("round 1 opened: tasks to 2 participants")
    updates = [e["summary"].split(" (")[0] for e in events if e["event"] == "update_accepted"]
    assert updates == ["round 1: updates 1/2", "round 1: updates 2/2"]
    assert summaries["round_aggregating"] == "round 1: aggregating 2 of 2 updates"
    assert "test accuracy" in summaries["round_closed"]
