"""A round's distillation as data: jobs that any process can run and get the same sets.

A :class:`DistillRequest` holds everything one round of per-participant distillation needs,
with the student and the latent space given as recipes (registry name and options, build_space
arguments) rather than objects, so that another process rebuilds them exactly: the
:mod:`latentfl.distill.distributed` workers receive a request over the process group, the
coordinator hands one to its worker group in a file. Each :class:`DistillJob` is one call of
:func:`~latentfl.distill.synthesize.distill`, i.e. one batched graph with its own seed. A job's
numbers depend on its own members and seed only, never on which process runs it or what runs
beside it, so :func:`run_request` in one process and the jobs spread over ranks give the same
synthetic sets (bit for bit on the CPU). The jobs are the unit of partitioning: participants
of one job share a graph whose augmentation draws are laid out over all of them, so splitting
a job would change its numbers.

This module does not import ``torch.distributed``: the single-process path runs without it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from latentfl.config import from_dict, to_dict
from latentfl.distill.synthesize import (
    DistillConfig,
    SetSpec,
    Space,
    SyntheticSet,
    build_space,
    distill,
)
from latentfl.distill.targets import FixedTargets
from latentfl.errors import DistillError
from latentfl.models import build_model
from latentfl.seeding import derive_seed

__all__ = ["REQUEST_FILE", "SETS_FILE", "DistillJob", "DistillRequest", "Distiller", "build_request_space", "plan_jobs",
           "read_request", "read_sets", "run_job", "run_request", "write_request", "write_sets"]


#: File names in a worker group's job folder: the request rank 0 reads, the sets it writes.
REQUEST_FILE = "request.safetensors"
SETS_FILE = "sets.safetensors"


@dataclass(frozen=True, eq=False)
class DistillJob:
    """One batched distillation: fixed pairs ``starts``/``targets (P, D)``, one class list per
    participant, and the seed of the :func:`distill` call."""

    starts: Tensor
    targets: Tensor
    classes: tuple[tuple[int, ...], ...]
    seed: int

    def cost(self, ipc: int) -> int:
        """Synthetic images the job trains: its work grows with them (same steps for all)."""
        return ipc * sum(len(c) for c in self.classes)


@dataclass(frozen=True, eq=False)
class DistillRequest:
    """A round's distillation: the student's recipe, what each set holds, the settings, the
    latent space's recipe and the jobs, in participant order."""

    architecture: dict[str, Any]  # build_model(name, num_classes, in_shape, **options)
    spec: SetSpec
    config: DistillConfig
    mean: tuple[float, ...]
    std: tuple[float, ...]
    space_seed: int
    jobs: tuple[DistillJob, ...]

    def student(self) -> nn.Module:
        """The student network (its initial weights are never used: trajectories start at the
        jobs' ``starts``); built without touching the global RNG."""
        a = self.architecture
        with torch.random.fork_rng(devices=[]):
            return build_model(a["name"], int(a["num_classes"]), tuple(a["in_shape"]),
                               **a.get("options", {}))

    def header(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-able data."""
        return {"architecture": self.architecture, "spec": [self.spec.num_classes, self.spec.ipc],
                "config": to_dict(self.config), "mean": list(self.mean), "std": list(self.std),
                "space_seed": self.space_seed,
                "jobs": [{"seed": j.seed, "classes": [list(c) for c in j.classes]}
                         for j in self.jobs]}

    @classmethod
    def from_header(cls, header: dict[str, Any], starts: Sequence[Tensor],
                    targets: Sequence[Tensor]) -> DistillRequest:
        """The request :meth:`header` describes, with each job's pairs."""
        jobs = tuple(DistillJob(s, t, tuple(tuple(c) for c in j["classes"]), int(j["seed"]))
                     for j, s, t in zip(header["jobs"], starts, targets, strict=True))
        return cls(header["architecture"], SetSpec(*header["spec"]),
                   from_dict(DistillConfig, header["config"], source="distill request"),
                   tuple(header["mean"]), tuple(header["std"]), int(header["space_seed"]), jobs)


#: Runs a request and returns one set per participant, in order; ``device`` is the caller's.
Distiller = Callable[[DistillRequest, torch.device], list[SyntheticSet]]


def plan_jobs(start: Tensor, targets: Sequence[Tensor], classes: Sequence[tuple[int, ...]], *,
              per_job: int, seed: int, path: Sequence[int | str] = ()
              ) -> tuple[DistillJob, ...]:
    """Participants in consecutive groups of ``per_job``, each a job seeded
    ``derive_seed(seed, *path, index of its first participant)``; every trajectory starts at
    ``start``."""
    jobs = []
    for lo in range(0, len(targets), per_job):
        stacked = torch.stack(list(targets[lo:lo + per_job]))
        jobs.append(DistillJob(start.expand_as(stacked).clone(), stacked,
                               tuple(classes[lo:lo + per_job]), derive_seed(seed, *path, lo)))
    return tuple(jobs)


def run_job(job: DistillJob, request: DistillRequest, student: nn.Module, space: Space,
            device: torch.device) -> list[SyntheticSet]:
    """One job's sets: exactly the :func:`distill` call the single-process path makes."""
    return distill(FixedTargets(job.starts, job.targets, job.classes), student, spec=request.spec,
                   space=space, config=request.config, device=device, seed=job.seed)


def build_request_space(request: DistillRequest, device: torch.device) -> Space:
    """The latent space the request's recipe names, on ``device``."""
    return build_space(request.config, image_shape=tuple(request.architecture["in_shape"]),
                       num_classes=request.spec.num_classes, mean=request.mean, std=request.std,
                       seed=request.space_seed, device=device)


def run_request(request: DistillRequest, device: torch.device) -> list[SyntheticSet]:
    """Every job in this process, in order (the local :data:`Distiller`)."""
    student, space = request.student(), build_request_space(request, device)
    return [s for job in request.jobs for s in run_job(job, request, student, space, device)]


def write_request(path: Path, request: DistillRequest) -> None:
    """The request as one safetensors file (pairs as tensors, the rest as JSON metadata)."""
    tensors = {}
    for i, job in enumerate(request.jobs):
        tensors[f"{i}.starts"] = job.starts.detach().float().cpu().contiguous()
        tensors[f"{i}.targets"] = job.targets.detach().float().cpu().contiguous()
    save_file(tensors, str(path), metadata={"request": json.dumps(request.header())})


def read_request(path: Path) -> DistillRequest:
    """What :func:`write_request` wrote."""
    with safe_open(str(path), "pt") as fh:
        header = json.loads(fh.metadata()["request"])
    tensors = load_file(str(path))
    n = len(header["jobs"])
    return DistillRequest.from_header(header, [tensors[f"{i}.starts"] for i in range(n)],
                                      [tensors[f"{i}.targets"] for i in range(n)])


def write_sets(path: Path, sets: Sequence[SyntheticSet]) -> None:
    """Synthetic sets in one safetensors file, in order."""
    tensors: dict[str, Tensor] = {}
    for i, s in enumerate(sets):
        tensors[f"{i}.images"] = s.images.clone()  # sets are views of one batch's tensors
        tensors[f"{i}.labels"] = s.labels.clone()
        tensors[f"{i}.alpha"] = torch.tensor([s.alpha], dtype=torch.float64)
        tensors[f"{i}.losses"] = torch.tensor(s.losses, dtype=torch.float64)
        if s.label_logits is not None:
            tensors[f"{i}.label_logits"] = s.label_logits.clone()
    save_file(tensors, str(path), metadata={"sets": str(len(sets))})


def read_sets(path: Path, count: int) -> list[SyntheticSet]:
    """What :func:`write_sets` wrote; refuses a file with another number of sets."""
    tensors = load_file(str(path))
    found = len({k.split(".")[0] for k in tensors})
    if found != count:
        raise DistillError(f"{path} holds {found} synthetic sets; expected {count}.")
    return [SyntheticSet(tensors[f"{i}.images"], tensors[f"{i}.labels"],
                         tensors.get(f"{i}.label_logits"), float(tensors[f"{i}.alpha"][0]),
                         tuple(tensors[f"{i}.losses"].tolist())) for i in range(count)]
