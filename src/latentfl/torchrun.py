"""The torchrun command lines latentfl starts (worker groups, experiment grids).

torchrun (``python -m torch.distributed.run``) is the launcher PyTorch ships: it starts the
ranks of one node, meets the other nodes at a rendezvous and fails the whole group when one rank
dies. latentfl always uses the static rendezvous: node 0 hosts it at ``MASTER_ADDR:MASTER_PORT``
and holds global ranks ``0 .. K-1``, so rank 0 is known in advance (it runs beside the
coordinator). ``--max-restarts 0``: a failed group is reported, never silently restarted.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence

__all__ = ["free_port", "torchrun_command"]


def torchrun_command(module: str, args: Sequence[str], *, nproc_per_node: int, nnodes: int = 1,
                     node_rank: int = 0, master_addr: str = "127.0.0.1", master_port: int,
                     rendezvous_timeout: float | None = None) -> list[str]:
    """The argv that runs ``python -m module *args`` on ``nproc_per_node`` ranks of this node."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes),
               "--nproc-per-node", str(nproc_per_node), "--node-rank", str(node_rank),
               "--master-addr", master_addr, "--master-port", str(master_port),
               "--max-restarts", "0"]
    if rendezvous_timeout is not None:
        command += ["--rdzv-conf", f"timeout={max(1, round(rendezvous_timeout))}"]
    return [*command, "-m", module, *args]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (for a rendezvous of this machine's ranks only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
