"""The site's local step: its data, and one task's training under the site's privacy.

The session hands an accepted task here (in a worker thread); what comes back is a
:class:`Trained` update, its manifest and the ledger's report, which the session encodes as
an UPDATE, or masks first in ``secagg`` and ``ckks`` mode.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from latentfl.data import load_dataset, to_tensors
from latentfl.device import resolve_device
from latentfl.models import ModelManifest, model_manifest
from latentfl.platform.participant.config import ParticipantConfig
from latentfl.platform.participant.privacy import SitePrivacy
from latentfl.platform.participant.worker import stop_between_batches
from latentfl.strategies import ModelSpec, Task, Update, run_task


@dataclass
class LocalData:
    """This site's training tensors and the summary HELLO may carry."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def summary(self, share_class_counts: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"num_examples": len(self.y)}
        if share_class_counts:
            out["class_counts"] = np.bincount(self.y.numpy(), minlength=self.num_classes).tolist()
        return out


def load_local_data(config: ParticipantConfig) -> LocalData:
    """The site's training split, or its part of a deterministic partition (demos, tests)."""
    ds = load_dataset(config.data)
    train = ds.train if config.partition is None else config.partition.take(ds.train)
    x, y = to_tensors(train, ds.mean, ds.std)
    return LocalData(x, y, ds.num_classes)


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
    manifest = model_manifest(spec.build())
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
