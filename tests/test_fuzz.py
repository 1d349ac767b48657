"""A bounded run of each decoder fuzz target (tests/fuzz_protocol.py) over its seed corpus."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TARGETS = ["envelope", "update", "tensors", "hello", "audit_report", "audit_request", "task"]
SECONDS_EACH = 8  # seven targets: about a minute in all


@pytest.mark.fuzz
@pytest.mark.parametrize("target", TARGETS)
def test_decoder_survives_fuzzing(target, tmp_path):
    """libFuzzer finds no input that makes this decoder raise anything but a refusal."""
    corpus = tmp_path / "corpus"
    shutil.copytree(HERE / "fuzz_corpus" / target, corpus)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, str(HERE / "fuzz_protocol.py"), target, str(corpus),
         f"-max_total_time={SECONDS_EACH}", "-max_len=65536", "-rss_limit_mb=3000",
         f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=SECONDS_EACH + 120, env=env)
    tail = run.stderr[-3000:]
    assert run.returncode == 0, f"fuzz target {target} found a crash:\n{tail}"
    assert "Done" in run.stderr, tail
