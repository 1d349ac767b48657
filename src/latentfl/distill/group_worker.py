"""One rank of a distillation worker group, started by torchrun.

    torchrun --nnodes N --nproc-per-node K --node-rank R --master-addr HOST --master-port PORT \\
        -m latentfl.distill.group_worker --job DIR [--backend gloo|nccl] [--timeout S]

Rank 0 (on node 0, beside the coordinator) reads ``DIR/request.safetensors``, every rank takes
its share of :func:`~latentfl.distill.distributed.distill_on_group`, and rank 0 writes
``DIR/sets.safetensors`` (renamed into place when complete, so a file there is a whole result).
The other ranks never read ``DIR``: they get the request over the process group. Exit status 0
means the sets were written; anything else (a rank died, the group did not form within
``--timeout`` seconds) leaves no sets file, and the launcher says which.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from latentfl.distill.distributed import distill_on_group
from latentfl.distill.jobs import REQUEST_FILE, SETS_FILE, read_request, write_sets

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run this rank's part; rank 0 writes the sets. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="latentfl.distill.group_worker")
    parser.add_argument("--job", type=Path, required=True, help="Folder of the request (rank 0).")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="Seconds a collective may wait for a missing rank.")
    args = parser.parse_args(argv)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if args.backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(args.backend, timeout=timedelta(seconds=args.timeout))
    try:
        request = read_request(args.job / REQUEST_FILE) if dist.get_rank() == 0 else None
        sets = distill_on_group(request, device)
        if sets is not None:
            partial = args.job / f"{SETS_FILE}.partial"
            write_sets(partial, sets)
            os.replace(partial, args.job / SETS_FILE)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
