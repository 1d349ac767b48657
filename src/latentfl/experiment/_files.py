"""Small file helpers of the experiment runner: atomic replacement and JSON-lines reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The complete JSON records of a rounds.jsonl file (a torn last line is ignored)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records
