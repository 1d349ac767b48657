"""Shared test fixtures."""

from __future__ import annotations

import pytest
import structlog


@pytest.fixture(autouse=True)
def _restore_logging():
    """CLI calls point structlog at the test's captured stderr; put the old config back after."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
