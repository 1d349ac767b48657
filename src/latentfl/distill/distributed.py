"""A round's distillation spread over a ``torch.distributed`` process group.

Every rank of the group calls :func:`distill_on_group` together. Rank 0 holds the
:class:`~latentfl.distill.jobs.DistillRequest` and broadcasts it (a JSON header as bytes, then
the pairs as one tensor), so no other rank needs a file from rank 0's host. The jobs are split
over the ranks by :func:`~latentfl.sharding.balance` on their cost, each rank runs its jobs
with the ordinary batched engine on its own device, and the synthetic sets travel back to rank 0
point to point. Every buffer's size follows from the request, so no rank ever unpickles
anything. Each job is the same :func:`~latentfl.distill.distill` call the single-process path
makes, so the sets are bit-identical to :func:`~latentfl.distill.jobs.run_request` on the CPU
(and within float tolerance on GPUs, where kernels may differ between devices).

DynaFed's synthesis stays on one rank: it is one distillation of one pseudo dataset, made once
per session (not one independent problem per participant per round), so there is nothing to
split without changing its numbers, and it costs a few seconds beside the session.

Backends: gloo on CPUs, NCCL on GPUs (tensors travel on the rank's device then).
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
from torch import Tensor

from latentfl.distill.jobs import DistillRequest, build_request_space, run_job
from latentfl.distill.synthesize import SyntheticSet
from latentfl.sharding import balance

__all__ = ["distill_on_group"]


def distill_on_group(request: DistillRequest | None, device: torch.device | str, *,
                     group: dist.ProcessGroup | None = None) -> list[SyntheticSet] | None:
    """Distil ``request`` over ``group`` (default: the whole world); a collective call.

    Rank 0 passes the request and gets every participant's set, in order; the other ranks pass
    None and get None.
    """
    device = torch.device(device)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    wire = device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    root = _global(group, 0)
    request = _broadcast_request(request if rank == 0 else None, wire, group, root)
    shares = balance([job.cost(request.spec.ipc) for job in request.jobs], world)
    student, space = request.student(), build_request_space(request, device)
    mine = {i: run_job(request.jobs[i], request, student, space, device) for i in shares[rank]}
    if rank != 0:
        for i in shares[rank]:
            dist.send(_pack(mine[i]).to(wire), root, group=group)
        return None
    done = dict(mine)
    for r in range(1, world):
        for i in shares[r]:
            buffer = torch.empty(_packed_size(request, i), dtype=torch.float64, device=wire)
            dist.recv(buffer, _global(group, r), group=group)
            done[i] = _unpack(request, i, buffer.cpu())
    return [s for i in range(len(request.jobs)) for s in done[i]]


def _global(group: dist.ProcessGroup | None, rank: int) -> int:
    """The global rank of ``group``'s ``rank`` (point-to-point calls take global ranks)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def _broadcast_request(request: DistillRequest | None, wire: torch.device,
                       group: dist.ProcessGroup | None, src: int) -> DistillRequest:
    if request is not None:
        header = request.header()
        header["dim"] = int(request.jobs[0].starts.shape[1]) if request.jobs else 0
        data = json.dumps(header).encode()
        size = torch.tensor([len(data)], dtype=torch.int64, device=wire)
    else:
        size = torch.zeros(1, dtype=torch.int64, device=wire)
    dist.broadcast(size, src, group=group)
    raw = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(wire) if request is not None
           else torch.empty(int(size.item()), dtype=torch.uint8, device=wire))
    dist.broadcast(raw, src, group=group)
    header = json.loads(bytes(raw.cpu().tolist()))
    counts = [len(j["classes"]) for j in header["jobs"]]
    if request is not None:
        pairs = torch.cat([torch.stack([j.starts, j.targets]).float().flatten(1)
                           for j in request.jobs] or [torch.empty(2, 0)], 1).to(wire)
    else:
        pairs = torch.empty(2, sum(counts) * header["dim"], dtype=torch.float32, device=wire)
    dist.broadcast(pairs, src, group=group)
    if request is not None:
        return request
    pairs = pairs.cpu().view(2, sum(counts), header["dim"])
    bounds = [0, *torch.tensor(counts).cumsum(0).tolist()]
    starts = [pairs[0, lo:hi].clone() for lo, hi in zip(bounds, bounds[1:], strict=False)]
    targets = [pairs[1, lo:hi].clone() for lo, hi in zip(bounds, bounds[1:], strict=False)]
    return DistillRequest.from_header(header, starts, targets)


def _set_sizes(request: DistillRequest, job: int) -> list[tuple[int, int]]:
    """(images, label-logit) element counts of each set of ``job``."""
    c, h, w = request.architecture["in_shape"]
    k = request.spec.num_classes
    out = []
    for classes in request.jobs[job].classes:
        m = len(classes) * request.spec.ipc
        out.append((m * c * h * w, m * k if request.config.soft_labels else 0))
    return out


def _packed_size(request: DistillRequest, job: int) -> int:
    per_set_scalars = 1 + request.config.iterations  # alpha, then one loss per iteration
    return sum(n + k + per_set_scalars for n, k in _set_sizes(request, job))


def _pack(sets: list[SyntheticSet]) -> Tensor:
    """One job's sets as one float64 vector (float32 values survive the round trip exactly)."""
    parts = []
    for s in sets:
        parts.append(s.images.flatten().double())
        if s.label_logits is not None:
            parts.append(s.label_logits.flatten().double())
        parts.append(torch.tensor([s.alpha, *s.losses], dtype=torch.float64))
    return torch.cat(parts)


def _unpack(request: DistillRequest, job: int, buffer: Tensor) -> list[SyntheticSet]:
    c, h, w = request.architecture["in_shape"]
    k, ipc = request.spec.num_classes, request.spec.ipc
    sets, at = [], 0
    for classes, (n_images, n_logits) in zip(request.jobs[job].classes,
                                             _set_sizes(request, job), strict=True):
        labels = torch.tensor(classes).repeat_interleave(ipc)
        images = buffer[at:at + n_images].float().view(len(labels), c, h, w)
        at += n_images
        logits = buffer[at:at + n_logits].float().view(len(labels), k) if n_logits else None
        at += n_logits
        scalars = buffer[at:at + 1 + request.config.iterations].tolist()
        at += 1 + request.config.iterations
        sets.append(SyntheticSet(images.clone(), labels, None if logits is None else logits.clone(),
                                 float(scalars[0]), tuple(scalars[1:])))
    return sets
