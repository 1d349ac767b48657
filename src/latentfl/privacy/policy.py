"""A site's privacy policy, enforced by its own agent: the coordinator cannot override it.

The agent calls :func:`check_task` with the task it is about to run, before touching any data;
a refusal is a :class:`~latentfl.errors.PrivacyError` whose ``rule`` is the short code the agent
sends back in its REJECT and whose message is the sentence a person reads.

Rules, in the order they are checked:

``mode_not_allowed``     the task's aggregation mode is not in ``allowed_modes``
``encryption_required``  the site requires hidden updates and the task is neither ckks nor secagg
``cohort_below_floor``   a ckks or secagg task whose ``min_cohort`` is below the site's own
``noise_too_low``        DP-SGD is off or its noise multiplier is below ``min_noise_multiplier``
``budget_exceeded``      the epsilon after the task would pass ``max_epsilon``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from latentfl.config import option
from latentfl.errors import ConfigError, PrivacyError
from latentfl.privacy.accounting import HistoryEntry
from latentfl.privacy.ledger import PrivacyLedger
from latentfl.privacy.modes import Aggregation
from latentfl.privacy.rules import PolicyRule


@dataclass(frozen=True)
class SitePolicy:
    """What a site agrees to spend and how its updates may leave (``[privacy.policy]``)."""

    max_epsilon: float | None = option(
        None,
        help="Largest total epsilon (at delta) this site will ever spend; none = no cap.",
        min=0.0,
        min_exclusive=True,
    )
    delta: float = option(
        1e-5,
        help="The site's delta: its ledger reports epsilon at this delta.",
        min=0.0,
        max=1.0,
        min_exclusive=True,
    )
    min_noise_multiplier: float = option(
        0.0,
        help="Refuse DP-SGD tasks with less noise than this (0 = DP-SGD not required).",
        min=0.0,
    )
    allowed_modes: tuple[Aggregation, ...] = option(
        tuple(Aggregation), help="Aggregation modes the site accepts: 'plain', 'ckks', 'secagg'."
    )
    require_encrypted_aggregation: bool = option(
        False, help="Refuse any task whose update the coordinator could read on its own."
    )
    min_cohort: int = option(
        2, help="ckks and secagg: fewest participants this site's update may be summed with "
        "(key list and survivor set included); a task asking for fewer is declined.", min=2
    )
    max_dropped_fraction: float = option(
        0.34, help="ckks and secagg: largest fraction of the key list missing from the survivor "
        "set that this site still signs and helps recover (the default never binds: the "
        "signature threshold already keeps it below a third).", min=0.0, max=1.0
    )

    def problems(self) -> list[str]:
        out = []
        if not self.allowed_modes:
            out.append("'allowed_modes' is empty; expected at least one mode.")
        if self.require_encrypted_aggregation and not any(m.hidden for m in self.allowed_modes):
            out.append(
                "'require_encrypted_aggregation' is true but neither 'ckks' nor 'secagg' is in "
                "'allowed_modes'; every task would be refused."
            )
        return out


@dataclass(frozen=True)
class PlannedTask:
    """What a task will spend if run: the agent builds it from the TASK and its own data.

    ``noise_multiplier = None`` means DP-SGD off; ``weight_noise_multiplier = None`` means the
    upload is not noised. ``sample_rate`` and ``steps`` are this round's DP-SGD values;
    ``min_cohort`` is what a ckks or secagg task states (None otherwise).
    """

    mode: Aggregation
    noise_multiplier: float | None
    sample_rate: float
    steps: int
    max_grad_norm: float | None = None
    weight_noise_multiplier: float | None = None
    min_cohort: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Aggregation(self.mode))

    def history(self) -> list[HistoryEntry]:
        """The accountant entries this task adds (see :mod:`latentfl.privacy.ledger`)."""
        out: list[HistoryEntry] = []
        if self.steps > 0:
            out.append((self.noise_multiplier or 0.0, self.sample_rate, self.steps))
        if self.weight_noise_multiplier:
            out.append((self.weight_noise_multiplier / 2.0, 1.0, 1))
        return out


def check_task(policy: SitePolicy, ledger: PrivacyLedger, planned: PlannedTask) -> None:
    """Refuse ``planned`` with PrivacyError(rule, sentence) if it breaks ``policy``."""
    if not math.isclose(ledger.delta, policy.delta, rel_tol=1e-12):
        raise ConfigError(
            f"privacy ledger {ledger.path} is kept at delta = {ledger.delta}, the site policy "
            f"says delta = {policy.delta}; open the ledger with the policy's delta."
        )
    if planned.mode not in policy.allowed_modes:
        raise PrivacyError(
            PolicyRule.MODE_NOT_ALLOWED,
            f"task asks for aggregation mode {planned.mode.value!r}; this site allows only "
            f"{', '.join(policy.allowed_modes)}.",
        )
    if policy.require_encrypted_aggregation and not planned.mode.hidden:
        raise PrivacyError(
            PolicyRule.ENCRYPTION_REQUIRED,
            f"task asks for aggregation mode {planned.mode.value!r}; this site requires 'ckks' or "
            "'secagg' so the coordinator never sees its update.",
        )
    if planned.mode.hidden and planned.min_cohort is not None \
            and planned.min_cohort < policy.min_cohort:
        raise PrivacyError(
            PolicyRule.COHORT_BELOW_FLOOR,
            f"task asks for min_cohort = {planned.min_cohort}; this site's policy takes part in "
            f"a masked sum only with min_cohort >= {policy.min_cohort}.",
        )
    noise = planned.noise_multiplier or 0.0
    if policy.min_noise_multiplier > 0 and noise < policy.min_noise_multiplier:
        seen = "DP-SGD off" if planned.noise_multiplier is None else f"noise multiplier {noise}"
        raise PrivacyError(
            PolicyRule.NOISE_TOO_LOW,
            f"task trains with {seen}; this site requires DP-SGD with a noise multiplier "
            f">= {policy.min_noise_multiplier}.",
        )
    if policy.max_epsilon is not None:
        before = ledger.epsilon()
        after = ledger.epsilon_if(planned.history())
        if after > policy.max_epsilon:
            why = (
                "without DP noise the epsilon is unbounded"
                if math.isinf(after)
                else f"would reach epsilon {after:.3f}"
            )
            raise PrivacyError(
                PolicyRule.BUDGET_EXCEEDED,
                f"task {why} (spent so far {before:.3f} at delta {ledger.delta:g}); this "
                f"site's budget is max_epsilon = {policy.max_epsilon}.",
            )


__all__ = ["PlannedTask", "SitePolicy", "check_task"]
