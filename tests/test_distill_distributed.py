"""Distillation over a gloo process group on loopback: the same sets as one process, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from latentfl.distill import DistillConfig, SetSpec
from latentfl.distill.jobs import (
    REQUEST_FILE,
    SETS_FILE,
    DistillRequest,
    plan_jobs,
    read_request,
    read_sets,
    run_request,
    write_request,
)
from latentfl.models import build_model, flatten_params
from latentfl.sharding import balance
from latentfl.torchrun import free_port, torchrun_command

ARCH = {"name": "convnet", "num_classes": 4, "in_shape": [3, 8, 8],
        "options": {"width": 8, "depth": 1}}


def _request(participants: int, per_job: int, **config) -> DistillRequest:
    """Participants with two different class lists, real targets (a few SGD steps)."""
    torch.manual_seed(0)
    model = build_model("convnet", 4, (3, 8, 8), width=8, depth=1)
    start = flatten_params(model)
    targets = [start + 0.01 * torch.randn_like(start) for _ in range(participants)]
    classes = [(0, 1, 2, 3) if p % 2 == 0 else (1, 3) for p in range(participants)]
    cfg = DistillConfig(iterations=2, steps=2, log_every=0, **config)
    return DistillRequest(ARCH, SetSpec(4, 1), cfg, (0.5,) * 3, (0.25,) * 3, 7,
                          plan_jobs(start, targets, classes, per_job=per_job, seed=3,
                                    path=("distill", 1)))


def _torchrun(job, ranks: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = torchrun_command("latentfl.distill.group_worker", ["--job", str(job)],
                               nproc_per_node=ranks, master_port=free_port())
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def one_thread_sets(request: DistillRequest):
    """The single-process path with one thread, as each rank has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_request(request, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)


def assert_same_sets(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert x.alpha == y.alpha and x.losses == y.losses
        assert (x.label_logits is None) == (y.label_logits is None)
        if x.label_logits is not None:
            assert torch.equal(x.label_logits, y.label_logits)


def test_balance_gives_the_longest_jobs_to_the_least_loaded_ranks():
    """Greedy longest-first split: every job once, loads as even as the greedy rule makes them."""
    shares = balance([5, 3, 3, 2, 1], 2)
    assert shares == [[0, 3], [1, 2, 4]]  # loads 5+2 and 3+3+1
    assert balance([4], 3) == [[0], [], []]


def test_request_file_round_trips(tmp_path):
    """A request written and read back has the same settings, seeds, classes and pairs."""
    request = _request(3, 2, prior="pixel")
    write_request(tmp_path / "r.safetensors", request)
    again = read_request(tmp_path / "r.safetensors")
    assert again.header() == request.header() and again.config == request.config
    for a, b in zip(again.jobs, request.jobs, strict=True):
        assert torch.equal(a.starts, b.starts) and torch.equal(a.targets, b.targets)


def test_three_ranks_give_the_sets_of_one_process(tmp_path):
    """3 gloo ranks return every participant's set, identical to one process (the coordinator
    test covers 2 ranks)."""
    request = _request(5, 2, soft_labels=True)  # jobs of 2, 2 and 1 participants, mixed classes
    write_request(tmp_path / REQUEST_FILE, request)
    done = _torchrun(tmp_path, 3)
    assert done.returncode == 0, done.stderr[-3000:]
    group_sets = read_sets(tmp_path / SETS_FILE, 5)
    assert [s.labels.tolist() for s in group_sets][:2] == [[0, 1, 2, 3], [1, 3]]
    assert_same_sets(group_sets, one_thread_sets(request))


def test_single_process_path_does_not_load_the_distributed_module():
    """The simulator, the strategies and the coordinator daemon never load the code that runs
    on a process group (latentfl.distill.distributed, group_worker)."""
    code = ("import sys, latentfl.simulate, latentfl.strategies, latentfl.distill.jobs, "
            "latentfl.platform.coordinator.daemon; "
            "print(sorted(m for m in sys.modules if m.startswith('latentfl.distill.') and "
            "('distributed' in m or 'group_worker' in m)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
