"""Over many random splits, clean sets rarely raise a flag and leaky sets are always caught."""

from __future__ import annotations

import numpy as np
import pytest

from latentfl.audits.distances import random_encoder
from latentfl.audits.synthetic import audit_synthetic
from latentfl.data import load_dataset

SPLITS = 20


@pytest.mark.slow
def test_false_alarm_and_miss_rates_over_random_splits() -> None:
    """20 splits: clean sets (unseen images, class means) flag <= 5%; copies of 5 always flag."""
    ds = load_dataset("builtin:cifar10-mini")
    encoder = random_encoder((3, 16, 16), (0.5,) * 3, (0.25,) * 3, seed=0)
    false_alarms = misses = 0
    for split in range(SPLITS):
        pick = np.random.default_rng(100 + split).choice(len(ds.train), 800, replace=False)
        x = ds.train.x[pick].astype(np.float32).reshape(800, 16, 2, 16, 2, 3).mean(axis=(2, 4))
        x = x.round().astype(np.uint8)
        train, holdout, other = x[:200], x[200:600], x[600:]
        other_labels = ds.train.y[pick[600:]]
        means = np.stack([other[other_labels == c].mean(0) for c in range(10)])
        for clean in (other[:60], means.round().astype(np.uint8)):
            false_alarms += audit_synthetic(clean, train, holdout, encoder=encoder,
                                            seed=split).flagged
        rng = np.random.default_rng(split)
        exact = train[rng.choice(200, 5, replace=False)]
        noised = np.clip(exact.astype(np.int16) + rng.normal(0, 4, exact.shape).round(), 0, 255)
        leaky = np.concatenate([exact, noised.astype(np.uint8)])
        audit = audit_synthetic(leaky, train, holdout, encoder=encoder, seed=split)
        flagged = {v.metric for v in audit.verdicts if v.flagged}
        misses += not {"pixel_nn", "extraction_ratio", "nn_share", "proximity_mia"} <= flagged
    assert false_alarms <= 0.05 * 2 * SPLITS
    assert misses == 0
