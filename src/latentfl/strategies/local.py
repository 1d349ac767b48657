"""A participant's side of a round: train the task's weights on local data, return an Update.

The participant agent and the simulator both call :func:`run_task`, so a method's local
behaviour comes from the task alone (FedProx's ``prox_mu`` lives in ``task.train``). The
simulator trains a whole round through :func:`run_tasks`, which may train participants that
share a device together (:func:`latentfl.training_batched.train_many`) with the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Literal

import torch

from latentfl.log import get_logger
from latentfl.models import load_tensors_, model_manifest, state_to_tensors
from latentfl.strategies.base import ModelSpec, Task, Tensors, Update
from latentfl.strategies.defence import clip_update
from latentfl.strategies.fedavg import normalised_weights
from latentfl.training import TrainResult, train
from latentfl.training_batched import can_batch, train_many

#: How a round's local training runs: ``auto`` batches on CUDA when the participants allow it.
LocalTraining = Literal["auto", "sequential", "batched"]

log = get_logger("local")


def run_task(
    task: Task,
    model_spec: ModelSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    participant: str,
    device: torch.device | str = "cpu",
    wrap: Callable | None = None,
    share_class_counts: bool = True,
) -> Update:
    """Train a fresh copy of the task's model on ``(x, y)`` and package the result.

    With ``share_class_counts`` the update's metrics say how many examples of each class the
    participant holds (FedDGM's ``classes = "present"`` uses them); a site may withhold them.
    """
    model = model_spec.build()
    load_tensors_(model, task.weights)
    result = train(model, x, y, task.train, device=device, wrap=wrap)
    return _update(task, model_spec, participant, state_to_tensors(model), result, y,
                   share_class_counts=share_class_counts)


def run_tasks(
    tasks: Mapping[str, Task],
    model_spec: ModelSpec,
    local_data: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | str = "cpu",
    mode: LocalTraining = "auto",
    group_size: int = 0,
    share_class_counts: bool = True,
) -> list[Update]:
    """Run every task (participant id -> task) on that participant's ``local_data``; the updates
    come back in the order of ``tasks`` and equal :func:`run_task`'s to float tolerance.

    ``batched`` trains participants whose settings agree up to the seed together, at most
    ``group_size`` at a time (0 = no limit); ``auto`` does so on CUDA only (on a CPU a plain loop
    is faster); ``sequential`` never does. Participants that cannot be batched (see
    :func:`latentfl.training_batched.can_batch`) are trained one at a time.
    """
    device = torch.device(device)
    updates: dict[str, Update] = {}
    if mode == "batched" or (mode == "auto" and device.type == "cuda"):
        updates = _run_batched(tasks, model_spec, local_data, device, group_size,
                               share_class_counts)
    for pid, task in tasks.items():
        if pid not in updates:
            updates[pid] = run_task(task, model_spec, *local_data[pid], participant=pid,
                                    device=device, share_class_counts=share_class_counts)
    return [updates[pid] for pid in tasks]


def _run_batched(
    tasks: Mapping[str, Task],
    model_spec: ModelSpec,
    local_data: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    group_size: int,
    share_class_counts: bool,
) -> dict[str, Update]:
    """Updates of the tasks that can be trained together; the others are left out."""
    model = model_spec.build()
    groups: dict[object, list[str]] = {}
    for pid, task in tasks.items():
        groups.setdefault(replace(task.train, seed=0), []).append(pid)
    manifest = model_manifest(model)
    updates: dict[str, Update] = {}
    for members in groups.values():
        reason = can_batch(model, [tasks[pid].train for pid in members])
        if reason is not None:
            log.info("local_training_sequential", participants=len(members), reason=reason)
            continue
        size = group_size or len(members)
        for i in range(0, len(members), size):
            chunk = members[i:i + size]
            for pid in chunk:
                manifest.check(tasks[pid].weights)  # as run_task's load_tensors_ does
            results = train_many(model, [tasks[pid].weights for pid in chunk],
                                 [local_data[pid] for pid in chunk],
                                 [tasks[pid].train for pid in chunk], device=device, names=chunk)
            for pid, (weights, result) in zip(chunk, results, strict=True):
                updates[pid] = _update(tasks[pid], model_spec, pid, weights, result,
                                       local_data[pid][1], share_class_counts=share_class_counts)
    return updates


def _update(task: Task, model_spec: ModelSpec, participant: str, weights: Tensors,
            result: TrainResult, y: torch.Tensor, *, share_class_counts: bool) -> Update:
    """The Update a participant returns for ``task`` after training to ``weights``."""
    counts = None
    if share_class_counts:
        counts = tuple(torch.bincount(y, minlength=model_spec.num_classes).tolist())
    if task.train.max_update_norm is not None:  # the coordinator's bound, kept before masking
        weights = clip_update(task.weights, weights, task.train.max_update_norm)
    if task.normalised_update:
        weights = normalised_weights(task.weights, weights, result.steps, task.train)
    return Update(
        participant=participant,
        round=task.round,
        weights=weights,
        num_examples=len(y),
        num_steps=result.steps,
        metrics={"train_loss": float(result.loss)},
        class_counts=counts,
    )


__all__ = ["LocalTraining", "run_task", "run_tasks"]
