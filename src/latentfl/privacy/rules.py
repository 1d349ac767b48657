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
    # the site's approval of what it runs ([policy.tasks], platform.participant.task_policy)
    METHOD_NOT_ALLOWED = "method_not_allowed"  # method or local training rule not allowed
    MODEL_NOT_ALLOWED = "model_not_allowed"  # model name or manifest digest not accepted
    TRAINING_OUT_OF_BOUNDS = "training_out_of_bounds"  # epochs, lr or batch size out of bounds
    ROUNDS_EXCEEDED = "rounds_exceeded"  # a round past the site's max_rounds
    # DP-SGD planning and the ledger
    BUDGET_TOO_LOW = "budget_too_low"  # no noise multiplier meets the target epsilon
    BAD_PARAMETERS = "bad_parameters"  # DP-SGD or weight-noise parameters out of range
    # the site policy's floors for masked modes (privacy.policy.check_task)
    COHORT_BELOW_FLOOR = "cohort_below_floor"  # a task's min_cohort is below the site's
    # secure aggregation: a participant's rules (privacy.secagg.client) and the site's one
    # upload a round; each refusal aborts the attempt at that participant
    MIN_COHORT = "min_cohort"  # a key list, survivor set or sum would cover too few
    SECAGG_REPEATED = "secagg_repeated"  # a phase asked a second time in one attempt
    SECAGG_OUT_OF_ORDER = "secagg_out_of_order"  # a phase asked before the one it follows
    SECAGG_ABORTED = "secagg_aborted"  # anything after the attempt was aborted
    SECAGG_BAD_KEY_LIST = "secagg_bad_key_list"  # a relayed advert fails or ours is missing
    SECAGG_BAD_INBOX = "secagg_bad_inbox"  # a relayed share does not open or is misplaced
    SECAGG_INBOX_SHORT = "secagg_inbox_short"  # too few masking partners (inbox or survivors)
    SECAGG_NOT_ACKNOWLEDGED = "secagg_not_acknowledged"  # sign/unmask before our upload's ACK
    SECAGG_BAD_SURVIVORS = "secagg_bad_survivors"  # repeated ids or ids outside the key list
    SECAGG_NOT_SURVIVOR = "secagg_not_survivor"  # asked to sign a set it is not part of
    SECAGG_TOO_MANY_DROPPED = "secagg_too_many_dropped"  # above the site's dropped fraction
    SECAGG_CONTRADICTION = "secagg_contradiction"  # contradicts what it was told or signed
    SECAGG_NOT_SIGNED = "secagg_not_signed"  # unmask or decrypt before signing the set
    SECAGG_CERTIFICATE = "secagg_certificate"  # fewer than t valid survivor signatures
    SECAGG_UNSIGNED = "secagg_unsigned"  # (coordinator) a survivor did not sign the set
    SECAGG_THRESHOLD = "secagg_threshold"  # too few holders revealed shares to unmask
    SECAGG_ALREADY_UPLOADED = "secagg_already_uploaded"  # one masked upload per round

__all__ = ["PolicyRule"]
