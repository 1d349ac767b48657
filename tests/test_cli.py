"""The latentfl command: version, help, exit statuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from latentfl import __version__
from latentfl.cli import build_parser, main
from latentfl.exitcodes import HELP, ExitCode


def test_version_and_help_via_python_m():
    """`python -m latentfl --version` and `--help` work and list the commands."""
    out = subprocess.run(
        [sys.executable, "-m", "latentfl", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and __version__ in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "latentfl", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "simulate" in out.stdout


def test_no_command_prints_help_and_fails(capsys):
    """A bare `latentfl` shows usage and exits 2."""
    assert main([]) == ExitCode.USER_ERROR
    assert "usage" in capsys.readouterr().out


def test_every_exit_code_has_a_help_sentence():
    """Each numbered exit status is explained."""
    for code in ExitCode:
        assert HELP[code].endswith("."), code


def test_bad_config_exits_2_with_one_line(tmp_path, capsys):
    """An unknown config key gives exit 2 and a message naming file and key, no traceback."""
    cfg = tmp_path / "sim.toml"
    cfg.write_text("roundz = 3\n")
    assert main(["simulate", "--config", str(cfg)]) == ExitCode.USER_ERROR
    err = capsys.readouterr().err
    assert "unknown key 'roundz'" in err and str(cfg) in err and "Traceback" not in err


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
@pytest.mark.parametrize("command", [["admin", "remove", "p01"], ["admin", "status"],
                                     ["participant", "audit-dp"]])
def test_config_goes_after_the_subcommand_and_still_before_it(command, before):
    """`--config FILE` parses after the subcommand's name (the one documented position) and,
    for the groups that took it there first, before it."""
    group, rest = command[:1], command[1:]
    argv = ([*group, "--config", "x.toml", *rest] if before
            else [*command, "--config", "x.toml"])
    args = build_parser().parse_args(argv)
    assert args.config == Path("x.toml")
    assert getattr(args, "id", "p01") == "p01"


@pytest.mark.parametrize("command", [["admin", "status"], ["participant", "audit-dp"]])
def test_a_subcommand_without_config_says_where_it_goes(command, capsys):
    """A subcommand given no --config exits 2 with one sentence showing the position."""
    assert main(command) == ExitCode.USER_ERROR
    prog = " ".join(["latentfl", *command])
    assert f"{prog} needs --config FILE; expected `{prog} --config FILE`." in (
        capsys.readouterr().err)
