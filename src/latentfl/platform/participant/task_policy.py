"""What this site agrees to run (``[policy.tasks]``): the site's approval of a TASK.

Fed-BioMed sites approve training plans before they run and NVFLARE sites set authorization
policies; here each agent checks every TASK against its own allow-list before any data is
touched, after the TASK decoded and before the privacy policy (``[privacy.policy]``, which
bounds the aggregation modes, the DP noise and the budget). A TASK outside it is declined with
the rule named (:class:`~latentfl.privacy.PolicyRule`), which the coordinator journals and the
operator sees in ``latentfl status`` and the consortium report. Nothing here is negotiable by
the coordinator: the limits live in the site's own config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from latentfl.config import option
from latentfl.errors import PrivacyError
from latentfl.privacy import PolicyRule
from latentfl.strategies import ModelSpec, Task
from latentfl.strategies.registry import Method

METHODS: tuple[str, ...] = get_args(Method)
"""The methods a coordinator can run (``strategy.method``), which a TASK names."""
LOCAL_METHODS = ("plain", "fedprox", "fednova")
"""The local training rules a TASK can ask for: plain local SGD (FedAvg, DynaFed, FedDGM),
FedProx's proximal term (``prox_mu > 0``), FedNova's normalised update."""


@dataclass(frozen=True)
class TaskPolicy:
    """Bounds on the TASKs this site runs; an empty list or none means no limit."""

    methods: tuple[str, ...] = option(
        (), help="Methods the coordinator may run with this site's updates, e.g. ['fedavg', "
                 "'dynafed'] (empty = all). FedDGM distils each upload into synthetic images; "
                 "a TASK that does not name its method is declined when this is set.")
    local_methods: tuple[str, ...] = option(
        (), help="Local training rules accepted: 'plain', 'fedprox', 'fednova' (empty = all).")
    models: tuple[str, ...] = option(
        (), help="Registry model names accepted, e.g. ['convnet'] (empty = any).")
    manifest_digests: tuple[str, ...] = option(
        (), help="Model manifest digests accepted (pins the exact architecture and options; "
                 "empty = any). `latentfl participant log` shows the digest of each TASK.")
    max_epochs: int | None = option(None, help="Most local epochs per round.", min=1)
    max_lr: float | None = option(None, help="Largest learning rate.", min=0.0,
                                  min_exclusive=True)
    min_batch_size: int | None = option(None, help="Smallest batch size (small batches make "
                                                   "per-example leakage larger).", min=1)
    max_batch_size: int | None = option(None, help="Largest batch size.", min=1)
    max_rounds: int | None = option(None, help="Highest round number of a session this site "
                                               "trains in; later TASKs are declined.", min=1)

    def problems(self) -> list[str]:
        out = [f"policy.tasks.methods holds {m!r}; expected one of {', '.join(METHODS)}."
               for m in self.methods if m not in METHODS]
        out += [f"policy.tasks.local_methods holds {m!r}; expected one of "
                f"{', '.join(LOCAL_METHODS)}." for m in self.local_methods
                if m not in LOCAL_METHODS]
        if (self.min_batch_size is not None and self.max_batch_size is not None
                and self.min_batch_size > self.max_batch_size):
            out.append(f"policy.tasks.min_batch_size = {self.min_batch_size} is above "
                       f"max_batch_size = {self.max_batch_size}; expected min <= max.")
        return out


@dataclass(frozen=True)
class SiteTaskPolicies:
    """The site's approval policies (``[policy]``)."""

    tasks: TaskPolicy = option(TaskPolicy(), help="Which TASKs this site runs.")


def local_method(task: Task) -> str:
    """The local training rule ``task`` asks for (one of :data:`LOCAL_METHODS`)."""
    if task.normalised_update:
        return "fednova"
    return "fedprox" if task.train.prox_mu > 0 else "plain"


def check_task_policy(policy: TaskPolicy, task: Task, model: ModelSpec, digest: str) -> None:
    """Raise PrivacyError naming the first rule ``task`` breaks; return if the site runs it."""
    train, r = task.train, task.round
    method = local_method(task)
    checks = [
        (policy.methods and task.method not in policy.methods, PolicyRule.METHOD_NOT_ALLOWED,
         (f"method {task.method!r}" if task.method else "a method it does not name (a "
          "coordinator older than the TASK's method field)")
         + f"; this site accepts {', '.join(policy.methods)}"),
        (policy.local_methods and method not in policy.local_methods,
         PolicyRule.METHOD_NOT_ALLOWED,
         f"local training {method!r}; this site accepts {', '.join(policy.local_methods)}"),
        (policy.models and model.name not in policy.models, PolicyRule.MODEL_NOT_ALLOWED,
         f"model {model.name!r}; this site accepts {', '.join(policy.models)}"),
        (policy.manifest_digests and digest not in policy.manifest_digests,
         PolicyRule.MODEL_NOT_ALLOWED,
         f"model manifest {digest}; this site accepts only the digests in "
         "policy.tasks.manifest_digests"),
        (policy.max_epochs is not None and train.epochs > policy.max_epochs,
         PolicyRule.TRAINING_OUT_OF_BOUNDS,
         f"epochs = {train.epochs}; this site allows at most {policy.max_epochs}"),
        (policy.max_lr is not None and train.lr > policy.max_lr,
         PolicyRule.TRAINING_OUT_OF_BOUNDS,
         f"lr = {train.lr}; this site allows at most {policy.max_lr}"),
        (policy.min_batch_size is not None and train.batch_size < policy.min_batch_size,
         PolicyRule.TRAINING_OUT_OF_BOUNDS,
         f"batch_size = {train.batch_size}; this site needs at least {policy.min_batch_size}"),
        (policy.max_batch_size is not None and train.batch_size > policy.max_batch_size,
         PolicyRule.TRAINING_OUT_OF_BOUNDS,
         f"batch_size = {train.batch_size}; this site allows at most {policy.max_batch_size}"),
        (policy.max_rounds is not None and r > policy.max_rounds,
         PolicyRule.ROUNDS_EXCEEDED,
         f"round {r}; this site trains in rounds 1 to {policy.max_rounds} of a session"),
    ]
    for broken, rule, what in checks:
        if broken:
            raise PrivacyError(rule, f"the TASK of round {r} asks for {what} "
                                     "(the site's [policy.tasks]).")


__all__ = ["LOCAL_METHODS", "METHODS", "SiteTaskPolicies", "TaskPolicy", "check_task_policy",
           "local_method"]
