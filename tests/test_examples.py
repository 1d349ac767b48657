"""Every example config in examples/ loads with the schema of the command its first line names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from latentfl.config import load_config
from latentfl.platform.admin_client import AdminConfig
from latentfl.platform.coordinator.config import CoordinatorConfig
from latentfl.platform.participant.config import ParticipantConfig
from latentfl.simulate import SimulationConfig

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))
SCHEMAS = {"simulate": SimulationConfig, "coordinator": CoordinatorConfig,
           "participant": ParticipantConfig, "admin": AdminConfig}


def test_there_are_examples() -> None:
    """The examples folder holds configs for the simulator, both daemons and the admin client."""
    commands = {re.match(r"# latentfl (\w+)", p.read_text()).group(1) for p in EXAMPLES}
    assert commands == set(SCHEMAS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    """The file's first line names its command; the file is valid for that command's schema."""
    first = path.read_text().splitlines()[0]
    # the command, then a subcommand where it has some (`latentfl admin status --config ...`)
    match = re.fullmatch(rf"# latentfl (\w+)(?: [\w-]+)? --config (examples/)?"
                         rf"{re.escape(path.name)}", first)
    assert match, f"{path.name} starts with {first!r}; expected the command that runs it"
    load_config(path, SCHEMAS[match.group(1)])
