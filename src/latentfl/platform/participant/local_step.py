"""The site's local step: its data, and one task's training under the site's privacy.

The session hands an accepted task here (in a worker thread); what comes back is a
:class:`Trained` update, its manifest and the ledger's report, which the session encodes as
an UPDATE, or masks first in ``secagg`` and ``ckks`` mode.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

from latentfl.data import load_dataset, to_tensors
from latentfl.device import resolve_device
from latentfl.models import ModelManifest
from latentfl.platform.participant.config import ParticipantConfig
from latentfl.platform.participant.privacy import SitePrivacy
from latentfl.platform.participant.worker import stop_between_batches
from latentfl.strategies import ModelSpec, Task, Update, run_task


class LocalData:
    """This site's training examples and the summary HELLO may carry.

    The images stay as stored (uint8, a quarter of the float32 the model trains on) until the
    first task or audit needs them, so an idle agent does not hold them normalised.
    """

    def __init__(self, y: torch.Tensor, num_classes: int,
                 normalised_images: Callable[[], torch.Tensor]) -> None:
        self.y = y
        self.num_classes = num_classes
        self._normalise = normalised_images
        self._x: torch.Tensor | None = None
        self._lock = threading.Lock()  # the training thread and an audit may both ask first

    @classmethod
    def of_tensors(cls, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> LocalData:
        """Data already normalised (tests, and callers that hold tensors)."""
        return cls(y, num_classes, lambda: x)

    @property
    def x(self) -> torch.Tensor:
        """The normalised images (N, C, H, W), computed on first use and kept."""
        with self._lock:
            if self._x is None:
                self._x = self._normalise()
            return self._x

    def summary(self, share_class_counts: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"num_examples": len(self.y)}
        if share_class_counts:
            out["class_counts"] = np.bincount(self.y.numpy(), minlength=self.num_classes).tolist()
        return out


def load_local_data(config: ParticipantConfig) -> LocalData:
    """The site's training split, or its part of a deterministic partition (demos, tests)."""
    ds = load_dataset(config.data)
    train = ds.train if config.partition is None else config.partition.take(ds.train)
    mean, std = ds.mean, ds.std  # not ``ds``: the closure would keep its test split alive
    y = torch.from_numpy(np.asarray(train.y, dtype=np.int64).copy())
    return LocalData(y, ds.num_classes, lambda: to_tensors(train, mean, std)[0])


class Trained(NamedTuple):
    """A trained update ready to encode or mask (the ledger's report rides along)."""

    update: Update
    manifest: ModelManifest
    report: Mapping[str, Any] | None


def train_locally(task: Task, spec: ModelSpec, sigma: float | None, *, data: LocalData,
                  privacy: SitePrivacy, config: ParticipantConfig, pid: str,
                  log: Any, stop: threading.Event) -> Trained:
    """Train (DP-SGD when configured, noise the weights when configured) and report; raise
    :class:`~latentfl.platform.participant.worker.Stopped` between batches once ``stop`` is
    set."""
    started = time.perf_counter()
    with privacy.training_wrap(task.round, sigma) as wrap:
        update = run_task(task, spec, data.x, data.y, participant=pid,
                          device=resolve_device(config.device),
                          wrap=stop_between_batches(wrap, stop),
                          share_class_counts=config.share_class_counts)
    manifest = spec.manifest()
    update = dataclasses.replace(update, weights=privacy.noise_weights(
        task.round, task.weights, update.weights, manifest))
    report = privacy.report()  # the ledger is saved when the wrap closes
    log.info("trained", round=task.round, steps=update.num_steps,
             examples=update.num_examples, seconds=round(time.perf_counter() - started, 2),
             epsilon=None if report is None else report["epsilon"],
             train_loss=update.metrics.get("train_loss"),
             summary=f"round {task.round}: trained {update.num_steps} steps in "
                     f"{time.perf_counter() - started:.1f} s"
                     + ("" if report is None else f", epsilon now {report['epsilon']:.2f}"))
    return Trained(update, manifest, report)


__all__ = ["LocalData", "Trained", "load_local_data", "train_locally"]
