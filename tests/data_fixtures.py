"""Fixtures shared by the data tests: a private cache folder and a live log stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentfl.log import configure_logging


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's ~/.cache: the default cache dir points into tmp_path."""
    monkeypatch.setenv("LATENTFL_CACHE_DIR", str(tmp_path / "env-cache"))


@pytest.fixture(autouse=True)
def _log_to_current_stderr() -> None:
    """A CLI test run earlier may have left structlog writing to a closed capture stream."""
    configure_logging("console")
