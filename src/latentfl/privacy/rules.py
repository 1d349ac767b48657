"""The rules a site's privacy enforces, by the name a refusal carries.

A :class:`~latentfl.errors.PrivacyError` names one of these as its ``rule``; when a
participant declines a task or a secagg step because of one, the DECLINE's reason is the rule
(beside the protocol's own :class:`~latentfl.errors.Reason`), so the set a coordinator may read
in a DECLINE is closed.
"""

from __future__ import annotations

from enum import StrEnum


class PolicyRule(StrEnum):
    """A privacy rule that refused something; the value goes on the wire and into journals."""

    # the site policy (privacy.policy.check_task), in the order it checks them
    MODE_NOT_ALLOWED = "mode_not_allowed"  # the aggregation mode is not in allowed_modes
    ENCRYPTION_REQUIRED = "encryption_required"  # the site requires a hidden mode
    NOISE_TOO_LOW = "noise_too_low"  # DP-SGD off or under min_noise_multiplier
    BUDGET_EXCEEDED = "budget_exceeded"  # the task would pass max_epsilon
    # DP-SGD planning and the ledger
    BUDGET_TOO_LOW = "budget_too_low"  # no noise multiplier meets the target epsilon
    BAD_PARAMETERS = "bad_parameters"  # DP-SGD or weight-noise parameters out of range
    # secure aggregation: a holder's rules (privacy.secagg) and the site's one upload a round
    MIN_COHORT = "min_cohort"  # a masked or encrypted sum would cover too few updates
    SECAGG_BOTH = "secagg_both"  # a holder never reveals both secrets of one participant
    SECAGG_NOT_SURVIVOR = "secagg_not_survivor"  # asked to unmask a sum it is not part of
    SECAGG_THRESHOLD = "secagg_threshold"  # too few holders revealed shares to unmask
    SECAGG_ALREADY_UPLOADED = "secagg_already_uploaded"  # one masked upload per round


__all__ = ["PolicyRule"]
