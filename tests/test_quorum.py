"""Quorums that can never be met are refused at start, before any state is written."""

from __future__ import annotations

from daemon_helpers import make_consortium
from latentfl.cli import main
from latentfl.config import write_config
from latentfl.exitcodes import ExitCode


def test_impossible_quorum_is_refused_at_start(tmp_path, capsys):
    """`latentfl coordinator` with min_participants 5 and 2 enrolled exits 2 with one sentence
    naming the key, the roster and the most it may be, and creates no state folder."""
    consortium = make_consortium(tmp_path, ["p00", "p01"])
    config = consortium.coordinator_config(min_participants=5)
    path = write_config(tmp_path / "coordinator.toml", config)
    assert main(["coordinator", "--config", str(path)]) == ExitCode.USER_ERROR
    err = capsys.readouterr().err
    assert "min_participants = 5" in err and "enrols 2 participant(s)" in err
    assert "expected at most 2" in err and err.count("\n") == 1
    assert not config.state_dir.exists()
