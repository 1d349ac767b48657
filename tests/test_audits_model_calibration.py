"""The model audit's false-flag rate, power and seed stability, measured on real tiny models.

A "null" model trains on images that are neither the audit's members nor its non-members, so
every membership flag against it is false; an overfit model trains on the members for many
epochs, so every run should flag it. Runs print one summary line each (pytest -s) for
docs/results.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentfl.audits.membership import audit_model
from latentfl.data import load_dataset, to_tensors
from latentfl.models import build_model
from latentfl.training import TrainConfig, train

ALPHA = 0.05
NULL_SEEDS = 20
MEMBERS = 500
NONMEMBERS = 4000  # half train the references; 2 x 1,000 scored resolve a 1% FPR


def _build() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", 10, (3, 8, 8), width=16, depth=1)


def _fit(epochs: int, batch_size: int = 256):
    def fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        train(model, x, y, TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="adam",
                                       lr=0.01, seed=seed))
    return fit


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """All 6,000 cifar10-mini images at 8x8 (tiny models keep 30 audits near a minute)."""
    ds = load_dataset("builtin:cifar10-mini")
    x = np.concatenate([ds.train.x, ds.test.x]).astype(np.float32)
    small = x.reshape(-1, 8, 4, 8, 4, 3).mean(axis=(2, 4)).round().astype(np.uint8)
    y = np.concatenate([ds.train.y, ds.test.y])
    return to_tensors(type(ds.train)(small, y, ds.train.classes), ds.mean, ds.std)


def _audit(model, x, y, members, nonmembers, seed):
    return audit_model(model, (x[members], y[members]), (x[nonmembers], y[nonmembers]),
                       references=2, build_reference=_build, train_reference=_fit(1),
                       seed=seed, alpha=ALPHA)


@pytest.mark.slow
def test_null_model_false_flags_stay_within_alpha_and_verdicts_do_not_flip(images) -> None:
    """20 null setups flag at most alpha of the time; one null model gets one verdict over 5 seeds."""
    x, y = images
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    own, rest = order[:500], order[500:]
    null = _build()
    _fit(20, 100)(null, x[own], y[own], 0)
    flagged = 0
    for seed in range(NULL_SEEDS):
        pick = np.random.default_rng(1000 + seed).permutation(rest)
        audit = _audit(null, x, y, pick[:MEMBERS], pick[MEMBERS:MEMBERS + NONMEMBERS], seed)
        flagged += audit.flagged
        statuses = [a.status for a in audit.attacks]
        assert "inconclusive" not in statuses, statuses  # 1% FPR is resolved at these sizes
    print(f"\nnull setups: {flagged} of {NULL_SEEDS} with any flag (alpha {ALPHA})")
    assert flagged <= ALPHA * NULL_SEEDS
    pick = np.random.default_rng(7).permutation(rest)
    verdicts = {tuple(v.status for v in _audit(null, x, y, pick[:MEMBERS],
                                               pick[MEMBERS:MEMBERS + NONMEMBERS], s).verdicts)
                for s in range(5)}
    print(f"null model, 5 audit seeds: verdicts {sorted(verdicts)}")
    assert len(verdicts) == 1


@pytest.mark.slow
def test_overfit_model_is_flagged_by_every_seed(images) -> None:
    """A model overfit on 300 members is flagged under each of 5 audit seeds: one overall verdict,
    and the strongest attack (RMIA) flags it every time. A weaker attack near its power limit may
    pass under one seed and flag under another (LiRA here); that never turns the verdict."""
    x, y = images
    order = np.random.default_rng(1).permutation(len(x))
    members, nonmembers = order[:300], order[300:300 + NONMEMBERS]
    overfit = _build()
    _fit(60, 100)(overfit, x[members], y[members], 0)
    verdicts, strongest = set(), set()
    for seed in range(5):
        audit = _audit(overfit, x, y, members, nonmembers, seed)
        assert audit.flagged, seed
        verdicts.add(tuple(v.status for v in audit.verdicts))
        strongest.add(audit.verdicts[-1].status)
        tpr = [round(a.operating_points[0].tpr, 3) for a in audit.attacks]
        print(f"\noverfit model, seed {seed}: TPR at 1% FPR {tpr}, "
              f"held-out FPR {[round(a.operating_points[0].fpr, 3) for a in audit.attacks]}")
    print(f"overfit model, 5 audit seeds: verdicts {sorted(verdicts)}")
    assert strongest == {"flag"}
