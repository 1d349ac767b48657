"""The agent's privacy duties: its site policy, its ledger, DP-SGD and CKKS, per task.

Before a task touches any data the agent builds a :class:`~latentfl.privacy.PlannedTask` (the
aggregation mode the task names (``Task.aggregation``); this round's DP-SGD
steps and sample rate) and runs :func:`~latentfl.privacy.check_task`; a PrivacyError becomes a
REJECT naming the rule. The noise multiplier is resolved once for the whole planned run and kept
in ``STATE/privacy_plan.json``, so a restarted agent keeps the same noise (re-deriving it from a
smaller remaining budget each time would not be the planned run any more).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from latentfl.durable import write_atomic
from latentfl.errors import StateError
from latentfl.models import ModelManifest, flatten_state, unflatten_state
from latentfl.platform.crypto.ckks_keys import load_participant_context
from latentfl.platform.participant.config import PrivacyConfig
from latentfl.privacy import (
    PlannedTask,
    PrivacyLedger,
    check_task,
    clip_and_noise,
    make_private,
    poisson_sample_rate,
    resolve_noise_multiplier,
    steps_per_round,
)
from latentfl.privacy.dp_sgd import import_opacus
from latentfl.privacy.ledger import LEDGER_FILE
from latentfl.seeding import derive_seed
from latentfl.strategies import Task, Tensors

PLAN_FILE = "privacy_plan.json"


class SitePrivacy:
    """One site's ledger, policy and keys, opened lazily (on the first task)."""

    def __init__(self, config: PrivacyConfig, *, state_dir: Path | None, key_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.key_dir = key_dir
        self._ledger: Any = None
        self._ckks: Any = None
        if self.dp:
            import_opacus()  # now, not in the first task's training thread

    @property
    def dp(self) -> bool:
        return self.config.dp_sgd.enabled

    @property
    def ledger(self) -> Any:
        """The site's PrivacyLedger (in memory when there is no state dir: then nothing is
        ever spent, since DP-SGD and an epsilon cap both require a state dir)."""
        if self._ledger is None:
            delta, accountant = self.config.policy.delta, self.config.dp_sgd.accountant
            if self.state_dir is None:
                self._ledger = PrivacyLedger(Path(LEDGER_FILE), delta=delta,
                                             accountant=accountant)  # type: ignore[arg-type]
            else:
                self._ledger = PrivacyLedger.open(self.state_dir, delta=delta,
                                                  accountant=accountant)  # type: ignore[arg-type]
        return self._ledger

    def noise_multiplier(self, task: Task, num_examples: int) -> float:
        """The run's noise multiplier: from the plan file, or resolved now and written there."""
        path = self.state_dir / PLAN_FILE  # DP-SGD implies a state dir (config check)
        if path.exists():
            try:
                return float(json.loads(path.read_text("utf-8"))["noise_multiplier"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise StateError(f"privacy plan {path} cannot be read: {exc}.") from None
        dp, cfg = self.config.dp_sgd, task.train
        sigma = resolve_noise_multiplier(dp, num_examples=num_examples, batch_size=cfg.batch_size,
                                         epochs=cfg.epochs, delta=self.config.policy.delta,
                                         max_steps=cfg.max_steps)
        plan = {"noise_multiplier": sigma, "target_epsilon": dp.target_epsilon,
                "planned_rounds": dp.planned_rounds, "num_examples": num_examples,
                "batch_size": cfg.batch_size, "epochs": cfg.epochs, "max_steps": cfg.max_steps,
                "delta": self.config.policy.delta}
        write_atomic(path, json.dumps(plan, indent=1), mode=0o600)
        return sigma

    def check(self, task: Task, num_examples: int, *, min_cohort: int | None = None
              ) -> float | None:
        """Refuse ``task`` (PrivacyError with the rule) if it breaks the site policy; return
        the noise multiplier it will train with (None without DP-SGD). ``min_cohort``: what a
        secagg or ckks TASK states."""
        cfg = task.train
        sigma = self.noise_multiplier(task, num_examples) if self.dp else None
        planned = PlannedTask(
            mode=task.aggregation,
            noise_multiplier=sigma,
            sample_rate=poisson_sample_rate(num_examples, cfg.batch_size),
            steps=steps_per_round(num_examples, cfg.batch_size, cfg.epochs, cfg.max_steps),
            max_grad_norm=self.config.dp_sgd.max_grad_norm if self.dp else None,
            weight_noise_multiplier=(self.config.weight_noise.noise_multiplier
                                     if self.config.weight_noise.enabled else None),
            min_cohort=min_cohort,
        )
        check_task(self.config.policy, self.ledger, planned)
        return sigma

    def training_wrap(self, round: int, noise_multiplier: float | None) -> Any:
        """A context manager giving the DP-SGD wrap for ``train`` (or None without DP-SGD)."""
        if noise_multiplier is None:
            return contextlib.nullcontext(None)
        dp = self.config.dp_sgd
        return make_private(ledger=self.ledger, round_=round, noise_multiplier=noise_multiplier,
                            max_grad_norm=dp.max_grad_norm,
                            max_physical_batch_size=dp.max_physical_batch_size,
                            secure_mode=dp.secure_mode,
                            noise_seed=None if self.config.noise_seed is None
                            else derive_seed(self.config.noise_seed, "dp_sgd", round))

    def noise_weights(self, round: int, start: Tensors, trained: Tensors,
                      manifest: ModelManifest) -> Tensors:
        """``trained`` with its update (trained - start) clipped and noised, accounted first;
        unchanged when weight noise is off."""
        wn = self.config.weight_noise
        if not wn.enabled:
            return trained
        base = flatten_state(start, manifest)
        generator = None
        if self.config.noise_seed is not None:
            generator = torch.Generator().manual_seed(
                derive_seed(self.config.noise_seed, "weight_noise", round))
        noised = clip_and_noise(flatten_state(trained, manifest) - base, clip_norm=wn.clip_norm,
                                noise_multiplier=wn.noise_multiplier, generator=generator)
        self.ledger.record_weight_noise(round, noise_multiplier=wn.noise_multiplier,
                                        clip_norm=wn.clip_norm)  # saved before any upload
        return unflatten_state(base + noised, manifest)

    def report(self) -> dict[str, Any] | None:
        """The ledger fields an UPDATE header carries; None without any DP noise (then the
        epsilon is unbounded, not zero)."""
        return self.ledger.report() if self.dp or self.config.weight_noise.enabled else None

    @property
    def ckks(self) -> Any:
        """This participant's secret CKKS context, unsealed with its CURVE key (SecurityError
        if missing or sealed to someone else)."""
        if self._ckks is None:
            self._ckks = load_participant_context(self.key_dir)
        return self._ckks


__all__ = ["PLAN_FILE", "SitePrivacy"]
