"""The daemons' processes import only what an idle daemon uses (issue 27: smaller processes).

Opacus, TenSEAL, matplotlib, torchvision and scipy are imported where they are used (DP-SGD,
CKKS, reports, torchvision's file formats), and Pillow where images are decoded from files or
drawn (a daemon reads its data from the decoded-array cache), so a coordinator or agent that
runs none of those never holds them in memory. Nor does an idle daemon import torch's compiler
stack (``torch._dynamo`` with sympy: 70-150 MB; torch.optim's first optimizer brings it).
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

HEAVY = ("opacus", "tenseal", "matplotlib", "torchvision", "scipy", "PIL", "sympy")
SUBMODULES = ("torch._dynamo", "torch._inductor")


@pytest.mark.parametrize("module", [
    "latentfl.platform.participant.agent",
    "latentfl.platform.coordinator.daemon",
    "latentfl.cli",
])
def test_daemon_modules_leave_heavy_libraries_unimported(module):
    """Importing a daemon's module (and building the CLI's parser) imports none of HEAVY."""
    code = (
        f"import sys, {module}\n"
        "from latentfl.cli import build_parser\n"
        "build_parser()\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        f"bad += sorted(set(sys.modules) & set({SUBMODULES!r}))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_idle_agent_holds_its_images_as_stored_until_a_task_needs_them():
    """The site's data is normalised on first use (a task or an audit), once, to exactly what
    training on the whole set would see; before that the agent holds the compact uint8 form."""
    import torch

    from latentfl.data import load_dataset, to_tensors
    from latentfl.platform.participant import load_local_data

    calls = []
    site = SimpleNamespace(data="builtin:cifar10-mini", partition=None)  # what it reads
    data = load_local_data(site)
    normalise = data._normalise
    data._normalise = lambda: calls.append(1) or normalise()
    assert len(data.y) == 5000 and not calls
    first, second = data.x, data.x
    assert first is second and calls == [1]
    ds = load_dataset("builtin:cifar10-mini")
    x, y = to_tensors(ds.train, ds.mean, ds.std)
    assert torch.equal(first, x) and torch.equal(data.y, y)
