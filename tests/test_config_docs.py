"""docs/configuration.md documents every option of every config file, as the schemas define it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_tables_are_current():
    """The schema tables in docs/configuration.md equal what the schemas generate now."""
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_config_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.DOC.read_text(encoding="utf-8")
    assert gen.START in text, "run: python scripts/gen_config_docs.py"
    assert gen.updated(text) == text, "docs/configuration.md is stale: run python scripts/gen_config_docs.py"
