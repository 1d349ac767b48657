"""A participant's side of a round: train the task's weights on local data, return an Update.

The participant agent and the simulator both call :func:`run_task`, so a method's local
behaviour comes from the task alone (FedProx's ``prox_mu`` lives in ``task.train``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from latentfl.strategies.base import CLASS_COUNT_PREFIX, ModelSpec, Task, Update


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
    from latentfl.models import load_tensors_, state_to_tensors
    from latentfl.training import train

    model = model_spec.build()
    load_tensors_(model, task.weights)
    result = train(model, x, y, task.train, device=device, wrap=wrap)
    metrics = {"train_loss": float(result.loss)}
    if share_class_counts:
        counts = torch.bincount(y, minlength=model_spec.num_classes).tolist()
        metrics.update({f"{CLASS_COUNT_PREFIX}{k}": float(c) for k, c in enumerate(counts)})
    return Update(
        participant=participant,
        round=task.round,
        weights=state_to_tensors(model),
        num_examples=len(y),
        num_steps=result.steps,
        metrics=metrics,
    )


__all__ = ["run_task"]
