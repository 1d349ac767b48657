"""Privacy building blocks: DP-SGD, the participant's ledger and policy, weight noise, CKKS.

Only this package imports Opacus and TenSEAL, and only inside the functions that need them, so
importing ``latentfl.privacy`` is cheap. See docs/privacy.md for what each mechanism protects.

- :mod:`~latentfl.privacy.accounting`  pure math: noise for a target epsilon, epsilon after k steps
- :mod:`~latentfl.privacy.ledger`      the participant's persistent spending (PrivacyLedger)
- :mod:`~latentfl.privacy.modes`       Aggregation: the one spelling of plain, ckks, secagg
- :mod:`~latentfl.privacy.policy`      a site's rules (SitePolicy) and check_task
- :mod:`~latentfl.privacy.rules`       PolicyRule: the closed set of rules a refusal names
- :mod:`~latentfl.privacy.dp_sgd`      make_private: the Opacus wrap for latentfl.training.train
- :mod:`~latentfl.privacy.weight_noise` clip + Gaussian noise on the uploaded update
- :mod:`~latentfl.privacy.ckks`        masked words under CKKS (coordinator sums, never decrypts)
- :mod:`~latentfl.privacy.secagg`      masked secure aggregation with dropout recovery
- :mod:`~latentfl.privacy.key_sealing` the secret context sealed to a participant's CURVE key

It imports nothing from :mod:`latentfl.platform` (a test checks it): the key-folder side of
CKKS lives in :mod:`latentfl.platform.crypto.ckks_keys`.
"""

from latentfl.privacy.accounting import (
    DPPlan,
    epsilon_for,
    epsilon_of_history,
    noise_multiplier_for,
    plan_dp_sgd,
    poisson_sample_rate,
    steps_per_round,
)
from latentfl.privacy.ckks import (
    SecureAggregationConfig,
    check_ciphertexts,
    check_min_cohort,
    ciphertext_count,
    ciphertexts_from_tensors,
    ciphertexts_to_tensors,
    create_context,
    decrypt_limb_sums,
    encrypt_masked,
    join_limbs,
    load_context,
    public_context_bytes,
    secret_context_bytes,
    slot_count,
    sum_ciphertexts,
)
from latentfl.privacy.dp_sgd import (
    DPSGDConfig,
    DPWrap,
    dp_compatible,
    make_private,
    resolve_noise_multiplier,
)
from latentfl.privacy.key_sealing import open_secret_context, seal_secret_context
from latentfl.privacy.ledger import LedgerRow, PrivacyLedger
from latentfl.privacy.modes import Aggregation
from latentfl.privacy.policy import PlannedTask, SitePolicy, check_task
from latentfl.privacy.rules import PolicyRule
from latentfl.privacy.weight_noise import (
    clip_and_noise,
    weight_noise_epsilon,
    weight_noise_multiplier_for,
)

__all__ = [
    "Aggregation",
    "PolicyRule",
    "DPPlan",
    "DPSGDConfig",
    "DPWrap",
    "LedgerRow",
    "PlannedTask",
    "PrivacyLedger",
    "SecureAggregationConfig",
    "SitePolicy",
    "check_ciphertexts",
    "check_min_cohort",
    "check_task",
    "ciphertext_count",
    "ciphertexts_from_tensors",
    "ciphertexts_to_tensors",
    "clip_and_noise",
    "create_context",
    "decrypt_limb_sums",
    "dp_compatible",
    "encrypt_masked",
    "epsilon_for",
    "epsilon_of_history",
    "join_limbs",
    "load_context",
    "make_private",
    "noise_multiplier_for",
    "open_secret_context",
    "plan_dp_sgd",
    "poisson_sample_rate",
    "public_context_bytes",
    "resolve_noise_multiplier",
    "seal_secret_context",
    "secret_context_bytes",
    "slot_count",
    "steps_per_round",
    "sum_ciphertexts",
    "weight_noise_epsilon",
    "weight_noise_multiplier_for",
]
