"""Pure privacy arithmetic: sample rates, noise multipliers and epsilons.

No state lives here (the participant's spending is kept by :mod:`latentfl.privacy.ledger`).
Everything is computed with Opacus's accountants, so the numbers a participant reports are the
numbers Opacus would give for the same history of ``(noise_multiplier, sample_rate, steps)``.

Poisson sampling as Opacus's ``DPDataLoader`` does it: a loader of ``ceil(n / batch)`` batches
becomes a sampler with ``sample_rate = 1 / ceil(n / batch)`` and the same number of steps per
epoch, so :func:`poisson_sample_rate` and :func:`steps_per_round` use that rule too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from latentfl.errors import ConfigError, PrivacyError

AccountantName = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

#: One accountant history entry: (noise_multiplier, sample_rate, steps), as in Opacus.
HistoryEntry = tuple[float, float, int]


def poisson_sample_rate(num_examples: int, batch_size: int) -> float:
    """The sample rate Opacus's Poisson loader uses for ``num_examples`` at ``batch_size``."""
    if num_examples < 1 or batch_size < 1:
        raise ConfigError(
            f"num_examples = {num_examples} and batch_size = {batch_size}; expected both >= 1."
        )
    return 1.0 / math.ceil(num_examples / batch_size)


def steps_per_round(
    num_examples: int, batch_size: int, epochs: int, max_steps: int | None = None
) -> int:
    """Optimizer steps one round of local training takes (``epochs`` passes, capped)."""
    if epochs < 1:
        raise ConfigError(f"epochs = {epochs}; expected an integer >= 1.")
    steps = epochs * math.ceil(num_examples / batch_size)
    return steps if max_steps is None else min(steps, max_steps)


def epsilon_of_history(
    history: Sequence[HistoryEntry], delta: float, accountant: AccountantName = "rdp"
) -> float:
    """Epsilon at ``delta`` of a composed history; 0 for an empty one, inf for a noiseless one."""
    _check_delta(delta)
    entries = [(float(s), float(q), int(k)) for s, q, k in history if int(k) > 0]
    if not entries:
        return 0.0
    if any(s <= 0.0 for s, _, _ in entries):
        return math.inf
    acc = _new_accountant(accountant)
    acc.history = entries
    with warnings.catch_warnings():
        # RDP: "Optimal order is the largest alpha" (the bound is valid, only not the tightest);
        # PRV: numpy's divide-by-zero in a branch of np.where that is not taken.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(acc.get_epsilon(delta=delta))


def epsilon_for(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: AccountantName = "rdp",
) -> float:
    """Epsilon after ``steps`` steps of DP-SGD at one noise multiplier and sample rate."""
    return epsilon_of_history([(noise_multiplier, sample_rate, steps)], delta, accountant)


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = "rdp",
) -> float:
    """The smallest noise multiplier (to 0.01 in epsilon) keeping ``steps`` steps within target.

    ``steps`` is the whole planned run (all rounds), so the budget is never re-spent per round.
    """
    from opacus.accountants.utils import get_noise_multiplier

    _check_delta(delta)
    if not target_epsilon > 0:
        raise ConfigError(f"target epsilon = {target_epsilon}; expected a value > 0.")
    if steps < 1:
        raise ConfigError(f"planned steps = {steps}; expected an integer >= 1.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # see epsilon_of_history
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
    except ValueError:
        raise PrivacyError(
            "budget_too_low",
            f"target epsilon {target_epsilon} at delta {delta} cannot be met for {steps} steps "
            f"at sample rate {sample_rate:.4g} by any noise multiplier up to 1e6; "
            "raise the epsilon, or plan fewer rounds, epochs or larger batches.",
        ) from None
    return float(sigma)


@dataclass(frozen=True)
class DPPlan:
    """A DP-SGD plan for a whole run: the noise and the epsilon after each round."""

    num_examples: int
    batch_size: int
    sample_rate: float
    steps_per_round: int
    rounds: int
    noise_multiplier: float
    delta: float
    accountant: str
    epsilons: tuple[float, ...]  # epsilon after round 1, 2, ..., rounds

    @property
    def total_steps(self) -> int:
        return self.steps_per_round * self.rounds


def plan_dp_sgd(
    *,
    num_examples: int,
    batch_size: int,
    epochs: int,
    rounds: int,
    delta: float,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    max_steps: int | None = None,
    accountant: AccountantName = "rdp",
) -> DPPlan:
    """Plan DP-SGD for ``rounds`` rounds; give exactly one of target_epsilon / noise_multiplier."""
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ConfigError(
            "give exactly one of target_epsilon and noise_multiplier; got "
            f"target_epsilon = {target_epsilon}, noise_multiplier = {noise_multiplier}."
        )
    if rounds < 1:
        raise ConfigError(f"rounds = {rounds}; expected an integer >= 1.")
    q = poisson_sample_rate(num_examples, batch_size)
    k = steps_per_round(num_examples, batch_size, epochs, max_steps)
    if noise_multiplier is None:
        sigma = noise_multiplier_for(target_epsilon, delta, q, k * rounds, accountant)
    else:
        if noise_multiplier <= 0:
            raise ConfigError(f"noise_multiplier = {noise_multiplier}; expected a value > 0.")
        sigma = float(noise_multiplier)
    epsilons = tuple(epsilon_for(sigma, q, k * r, delta, accountant) for r in range(1, rounds + 1))
    return DPPlan(num_examples, batch_size, q, k, rounds, sigma, delta, accountant, epsilons)


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta = {delta}; expected a value in (0, 1), typically < 1/n.")


def _new_accountant(name: str):
    from opacus.accountants import create_accountant

    if name not in ACCOUNTANTS:
        raise ConfigError(f"accountant = {name!r}; expected one of {', '.join(ACCOUNTANTS)}.")
    return create_accountant(mechanism=name)


__all__ = [
    "ACCOUNTANTS",
    "AccountantName",
    "DPPlan",
    "HistoryEntry",
    "epsilon_for",
    "epsilon_of_history",
    "noise_multiplier_for",
    "plan_dp_sgd",
    "poisson_sample_rate",
    "steps_per_round",
]
