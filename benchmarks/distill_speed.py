"""Distillation speed: participant-iterations per second and peak memory.

Workload (the FedDGM/MTT reference setting): ConvNet-3, width 128, instance norm, 32x32 RGB,
10 classes, IPC 10, N=30 unrolled steps, batch 100, DSA augmentation on; pixel space and the
built-in generator's F-space; unroll ``full`` and ``two_pass``; 1 and 10 participants per call
(``distill`` batches them in one graph). The baseline is the straightforward loop: one
participant at a time, a flat parameter vector, ``autograd.grad(create_graph=True)`` each step,
one backward through the whole unroll and the generator.

Each case runs in a fresh process, so the peak memory is the case's own: CUDA peak allocated
bytes on a GPU, the process's peak RSS on a CPU. The CPU-seconds column (process time of all
threads) is the steadier figure on a shared CPU, where wall time depends on the other load. ``--quick`` shrinks the workload (width 32,
IPC 2, N=5, 1 and 4 participants) for a CPU smoke run.

    python benchmarks/distill_speed.py --device cuda
    python benchmarks/distill_speed.py --device cpu --quick
    python benchmarks/distill_speed.py --device cpu --quick --iterations 1 --participants 1 --spaces latent

``--ranks 1 2`` times instead one round of ``--participants`` participants (default 8), each its
own job (the CPU default of FedDGM), distilled on a gloo group of each given size started with
torchrun (one thread per rank), F-space of the built-in generator, full unroll: the seconds from
the broadcast of the request to the last set gathered on rank 0, and the whole command's wall time
with torchrun's start-up.

    python benchmarks/distill_speed.py --ranks 1 2 --quick
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Case:
    method: str  # "engine" or "baseline"
    space: str  # "pixel" or "latent"
    unroll: str
    participants: int
    width: int
    ipc: int
    steps: int
    batch: int
    iterations: int
    device: str


def _setup(case: Case):
    from latentfl.distill import DistillConfig, build_space
    from latentfl.models import build_model, flatten_params

    torch.manual_seed(0)
    device = torch.device(case.device)
    model = build_model("convnet", 10, (3, 32, 32), width=case.width, depth=3, norm="instance")
    start = flatten_params(model)
    gen = torch.Generator().manual_seed(1)
    starts = start.expand(case.participants, -1).clone()
    targets = starts + 0.01 * torch.randn(starts.shape, generator=gen)
    cfg = DistillConfig(iterations=case.iterations, steps=case.steps, batch_size=case.batch,
                        unroll=case.unroll if case.unroll != "-" else "full", augment=True,
                        prior="pixel" if case.space == "pixel" else "random", log_every=0)
    space = build_space(cfg, image_shape=(3, 32, 32), num_classes=10, mean=(0.5,) * 3,
                        std=(0.25,) * 3, seed=0, device=device)
    return model, starts.to(device), targets.to(device), cfg, space


def _engine(case: Case, model, starts, targets, cfg, space, iterations: int) -> None:
    from dataclasses import replace

    from latentfl.distill import FixedTargets, SetSpec, distill

    distill(FixedTargets(starts, targets), model, spec=SetSpec(num_classes=10, ipc=case.ipc),
            space=space, config=replace(cfg, iterations=iterations), device=case.device, seed=0)


def _baseline(case: Case, model, starts, targets, cfg, space, iterations: int) -> None:
    """The reference-style loop: per participant, full unroll, one backward for everything, through
    PyTorch's own layers (not the engine's fused CPU functions)."""
    from latentfl.distill import augment
    from latentfl.models import functional_forward
    from latentfl.seeding import derive_seed

    device = torch.device(case.device)
    model = model.to(device)
    labels = torch.arange(10, device=device).repeat_interleave(case.ipc)
    for p in range(case.participants):
        params = space.init(labels, seed=p)
        groups = space.lr_groups(params, pixel=cfg.lr_pixel, feature=cfg.lr_feature,
                                 style=cfg.lr_style)
        opt = torch.optim.SGD(groups, lr=cfg.lr_pixel, momentum=0.5)
        alpha = torch.tensor(cfg.alpha_init, device=device, requires_grad=True)
        opt_alpha = torch.optim.SGD([alpha], lr=cfg.alpha_lr, momentum=0.5)
        start, target = starts[p], targets[p]
        for it in range(iterations):
            if case.space == "pixel":
                images = params[0]
            else:
                images = space.generator.render(space.latent(params))
            theta = start.clone().requires_grad_(True)
            for step in range(case.steps):
                idx = torch.randperm(labels.shape[0], device=device)[: case.batch]
                x = augment(images[idx], seed=derive_seed(p, "step", it, step))
                loss = F.cross_entropy(functional_forward(model, theta, x), labels[idx])
                (g,) = torch.autograd.grad(loss, theta, create_graph=True)
                theta = theta - alpha * g
            match = (theta - target).pow(2).sum() / (start - target).pow(2).sum()
            opt.zero_grad()
            opt_alpha.zero_grad()
            match.backward()
            opt.step()
            opt_alpha.step()


def run_case(case: Case) -> tuple[float, float, float]:
    """Participant-iterations per second (wall), CPU seconds per participant-iteration, and peak
    memory in MiB for one case."""
    torch.set_num_threads(torch.get_num_threads())
    args = _setup(case)
    fn = _engine if case.method == "engine" else _baseline
    cuda = case.device.startswith("cuda")
    fn(case, *args, iterations=2)  # warm-up: kernels, autotuning, allocator, primitive caches
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    fn(case, *args, iterations=case.iterations)
    if cuda:
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    work = case.participants * case.iterations
    return work / elapsed, cpu / work, peak


def _round_request(participants: int, width: int, ipc: int, steps: int, batch: int,
                   iterations: int):
    """A FedDGM round on the CPU: one job per participant, the built-in generator's F-space."""
    from latentfl.distill import DistillConfig, SetSpec
    from latentfl.distill.jobs import DistillRequest, plan_jobs
    from latentfl.models import build_model, flatten_params

    torch.manual_seed(0)
    arch = {"name": "convnet", "num_classes": 10, "in_shape": [3, 32, 32],
            "options": {"width": width, "depth": 3, "norm": "instance"}}
    start = flatten_params(build_model("convnet", 10, (3, 32, 32), width=width, depth=3,
                                       norm="instance"))
    gen = torch.Generator().manual_seed(1)
    targets = [start + 0.01 * torch.randn(start.shape, generator=gen) for _ in range(participants)]
    cfg = DistillConfig(iterations=iterations, steps=steps, batch_size=batch, prior="random",
                        log_every=0)
    return DistillRequest(arch, SetSpec(10, ipc), cfg, (0.5,) * 3, (0.25,) * 3, 0,
                          plan_jobs(start, targets, [tuple(range(10))] * participants, per_job=1,
                                    seed=0))


def _group_rank(request_path: str) -> None:
    """One torchrun rank of ``--ranks``: time distill_on_group; rank 0 prints the seconds."""
    import torch.distributed as dist

    from latentfl.distill.distributed import distill_on_group
    from latentfl.distill.jobs import read_request

    dist.init_process_group("gloo")
    request = read_request(Path(request_path)) if dist.get_rank() == 0 else None
    dist.barrier()
    t0 = time.perf_counter()
    sets = distill_on_group(request, "cpu")
    if sets is not None:
        print(json.dumps({"seconds": time.perf_counter() - t0, "sets": len(sets)}), flush=True)
    dist.destroy_process_group()


def _ranks_table(ranks: list[int], participants: int, quick: bool, iterations: int | None) -> None:
    from latentfl.distill.jobs import write_request
    from latentfl.torchrun import free_port

    width, ipc, steps = (32, 2, 5) if quick else (128, 10, 30)
    iters = iterations or (3 if quick else 5)
    batch = min(100, 10 * ipc)
    request = _round_request(participants, width, ipc, steps, batch, iters)
    print(f"# distill_speed --ranks: one round of {participants} participants (one job each), "
          f"ConvNet-3 width {width}, 32x32, IPC {ipc}, N={steps}, batch {batch}, DSA on, F-space, "
          f"full unroll, {iters} iterations, gloo, 1 thread per rank, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}")
    print("| ranks | distill s | participant-it/s | speed-up | command wall s (with start-up) |")
    print("| --- | --- | --- | --- | --- |")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "request.safetensors"
        write_request(path, request)
        for k in ranks:
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(k),
                       "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                       __file__, "--group-rank", str(path)]
            t0 = time.perf_counter()
            out = subprocess.run(command, capture_output=True, text=True, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            wall = time.perf_counter() - t0
            seconds = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
            base = base or seconds
            print(f"| {k} | {seconds:.1f} | {participants * iters / seconds:.3f} | "
                  f"{base / seconds:.2f}x | {wall:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed iterations per case (default 10, --quick 2)")
    parser.add_argument("--quick", action="store_true", help="small workload for a CPU smoke run")
    parser.add_argument("--participants", type=int, nargs="+", default=None,
                        help="participants per call (default 1 10, --quick 1 4)")
    parser.add_argument("--spaces", nargs="+", choices=("pixel", "latent"),
                        default=("pixel", "latent"), help="image spaces to time (default both)")
    parser.add_argument("--ranks", type=int, nargs="+", default=None,
                        help="time one round on gloo groups of these sizes (see above)")
    parser.add_argument("--group-rank", help=argparse.SUPPRESS)  # a torchrun rank of --ranks
    args = parser.parse_args()
    if args.group_rank:
        _group_rank(args.group_rank)
        return
    if args.ranks:
        _ranks_table(args.ranks, (args.participants or [8])[0], args.quick, args.iterations)
        return
    if args.quick:
        width, ipc, steps, participants, iters = 32, 2, 5, (1, 4), 2
    else:
        width, ipc, steps, participants, iters = 128, 10, 30, (1, 10), 10
    iters = args.iterations or iters
    participants = args.participants or participants
    batch = min(100, 10 * ipc)
    cases = []
    for space in args.spaces:
        for p in participants:
            cases.append(Case("baseline", space, "-", p, width, ipc, steps, batch, iters,
                              args.device))
            for unroll in ("full", "two_pass"):
                cases.append(Case("engine", space, unroll, p, width, ipc, steps, batch, iters,
                                  args.device))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    mem = "peak alloc MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"# distill_speed: ConvNet-3 width {width} instance norm, 32x32, 10 classes, IPC {ipc}, "
          f"N={steps}, batch {batch}, DSA on, {iters} timed iterations, device {name}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| space | method | unroll | participants | participant-it/s | s/participant-it | "
          f"CPU s/participant-it | {mem} |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    ctx = mp.get_context("spawn")
    for case in cases:
        with ctx.Pool(1) as pool:
            rate, cpu, peak = pool.apply(run_case, (case,))
        print(f"| {case.space} | {case.method} | {case.unroll} | {case.participants} | "
              f"{rate:.3f} | {1 / rate:.3f} | {cpu:.3f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
