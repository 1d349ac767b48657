"""The coordinator's roster watcher: reloads on change, names the revoked, survives a bad edit."""

from __future__ import annotations

import os

import pytest

from latentfl.errors import ConfigError
from latentfl.platform.coordinator.roster_watch import RosterWatcher
from latentfl.platform.crypto import ROSTER_FILE, init_consortium, load_roster, revoke_participant


@pytest.fixture()
def consortium(tmp_path):
    init_consortium(tmp_path, ["site-a", "site-b"])
    path = tmp_path / ROSTER_FILE
    return tmp_path, path, RosterWatcher(path, load_roster(path))


def test_unchanged_file_is_not_reloaded(consortium) -> None:
    """Polling an untouched roster reports nothing; a forced poll (SIGHUP) reloads anyway."""
    _, _, watcher = consortium
    assert watcher.poll() is None
    forced = watcher.poll(force=True)
    assert forced is not None and forced.revoked == []


def test_revocation_is_reported_once(consortium) -> None:
    """Revoking a participant is seen on the next poll, naming it; the poll after is quiet."""
    folder, _, watcher = consortium
    revoke_participant(folder, "site-b")
    change = watcher.poll()
    assert change is not None and change.revoked == ["site-b"]
    assert change.roster.active_ids() == ["site-a"] and watcher.roster is change.roster
    assert watcher.poll() is None


def test_broken_edit_keeps_last_good_roster(consortium) -> None:
    """A roster that no longer parses raises once, keeps the old roster, then waits for a fix."""
    folder, path, watcher = consortium
    good = path.read_text()
    path.write_text("this is [not toml")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="not valid TOML"):
        watcher.poll()
    assert watcher.roster.active_ids() == ["site-a", "site-b"]
    assert watcher.poll() is None  # the same broken file is not reported again
    path.write_text(good)
    os.utime(path, ns=(1, 1))  # a different mtime, as a real edit would have
    change = watcher.poll()
    assert change is not None and change.revoked == []
