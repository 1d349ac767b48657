"""Regenerate docs/configuration.md from the config schemas (the one source of defaults).

Run: python scripts/gen_config_docs.py   (tests/test_config_docs.py checks the file is current)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# (title, "module:Schema", command that reads it, example file)
SCHEMAS = [
    (
        "Simulation",
        "latentfl.simulate:SimulationConfig",
        "latentfl simulate --config FILE",
        "examples/simulate.toml",
    ),
    (
        "Coordinator",
        "latentfl.platform.coordinator.config:CoordinatorConfig",
        "latentfl coordinator --config FILE",
        "examples/coordinator.toml",
    ),
    (
        "Participant",
        "latentfl.platform.participant.config:ParticipantConfig",
        "latentfl participant --config FILE",
        "examples/participant.toml",
    ),
    (
        "Experiment",
        "latentfl.experiment.config:ExperimentConfig",
        "latentfl experiment --config FILE",
        "experiments/dynafed_cifar10-smoke.toml",
    ),
]

HEADER = """# Configuration reference

Every latentfl config file is TOML. Unknown keys, wrong types and out-of-range values are refused
before anything is loaded, all together, each named with its file and key. Relative paths are
resolved against the folder of the file that holds them. This page is generated from the schemas
by `python scripts/gen_config_docs.py`; a test fails when it is out of date.
"""


def render() -> str:
    from latentfl.config import describe

    parts = [HEADER]
    for title, target, command, example in SCHEMAS:
        module, name = target.split(":")
        try:
            schema = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        parts.append(f"\n## {title}\n\nRead by `{command}`; example: `{example}`.\n")
        parts.append("| key | type | default | meaning |\n| --- | --- | --- | --- |")
        for key, tname, default, help_text in describe(schema):
            cell = default.replace("|", "\\|")
            parts.append(f"| `{key}` | {tname.replace('|', 'or')} | `{cell}` | {help_text} |")
    return "\n".join(parts) + "\n"


def main() -> int:
    out = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    out.write_text(render(), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
