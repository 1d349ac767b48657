"""The model audit: attack scores against theory, a DP violation reported, a real end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentfl.audits.attacks import Outputs, lira_offline_scores, loss_scores, rmia_offline_scores
from latentfl.audits.membership import attack_verdicts, audit_model, evaluate_attack
from latentfl.audits.roc import auc
from latentfl.data import load_dataset, to_tensors
from latentfl.models import build_model
from latentfl.training import TrainConfig, train


def _outputs(logit: np.ndarray) -> Outputs:
    prob = 1 / (1 + np.exp(-logit))
    return Outputs(loss=-np.log(prob), prob=prob, scaled_logit=logit, correct=prob > 0.5)


def test_lira_removes_per_example_difficulty() -> None:
    """Members shifted by d over per-example OUT means: LiRA AUC ~ Phi(d/sqrt2), LOSS far lower."""
    rng = np.random.default_rng(0)
    n, refs, d = 3000, 64, 1.0
    difficulty_m = rng.normal(0, 4, n)
    difficulty_n = rng.normal(0, 4, n)
    member = _outputs(difficulty_m + rng.normal(d, 1, n))
    nonmember = _outputs(difficulty_n + rng.normal(0, 1, n))
    refs_m = [_outputs(difficulty_m + rng.normal(0, 1, n)) for _ in range(refs)]
    refs_n = [_outputs(difficulty_n + rng.normal(0, 1, n)) for _ in range(refs)]
    lira = auc(lira_offline_scores(member, refs_m), lira_offline_scores(nonmember, refs_n))
    expected = 0.5 * (1 + math.erf(d / 2 / math.sqrt(1 + 1 / refs)))
    assert lira == pytest.approx(expected, abs=0.02)
    assert auc(loss_scores(member), loss_scores(nonmember)) < expected - 0.1


def test_rmia_scores_separate_members_from_population() -> None:
    """RMIA gives members higher scores when the target model prefers them over references."""
    rng = np.random.default_rng(1)
    n = 2000
    base_m, base_n, base_z = (rng.uniform(0.2, 0.8, n) for _ in range(3))
    member = Outputs(-np.log(base_m + 0.15), base_m + 0.15, np.zeros(n), np.ones(n, bool))
    nonmember = Outputs(-np.log(base_n), base_n, np.zeros(n), np.ones(n, bool))
    refs_m = [Outputs(-np.log(base_m), base_m, np.zeros(n), np.ones(n, bool))]
    refs_n = [Outputs(-np.log(base_n), base_n, np.zeros(n), np.ones(n, bool))]
    population = Outputs(-np.log(base_z), base_z, np.zeros(n), np.ones(n, bool))
    pop_refs = base_z[None, :].copy()
    s_m = rmia_offline_scores(member, refs_m, population, pop_refs)
    s_n = rmia_offline_scores(nonmember, refs_n, population, pop_refs)
    assert np.all((s_m > -0.01) & (s_m < 1.01))
    assert auc(s_m, s_n) > 0.75


def test_attack_above_dp_claim_is_reported_as_violation() -> None:
    """A fabricated result above e^eps FPR + delta becomes a flagged 'VIOLATION' verdict."""
    rng = np.random.default_rng(2)
    result = evaluate_attack("LOSS", rng.normal(3, 1, 1000), rng.normal(0, 1, 1000),
                             level=0.025, dp_claim=(0.5, 1e-5))
    assert result.dp is not None and result.dp.violated
    verdicts = attack_verdicts([result])
    dp_row = next(v for v in verdicts if v.metric.startswith("dp_bound"))
    assert dp_row.flagged and "VIOLATION" in dp_row.explanation


def test_attack_within_dp_claim_passes() -> None:
    """Scores with no signal never violate even a small DP claim."""
    rng = np.random.default_rng(3)
    result = evaluate_attack("LOSS", rng.normal(0, 1, 1000), rng.normal(0, 1, 1000),
                             level=0.025, dp_claim=(0.1, 1e-5))
    assert not result.dp.violated
    point = result.operating_points[0]
    assert point.tpr_low <= point.tpr <= point.tpr_high
    assert point.fpr_low <= point.fpr <= point.fpr_high


@pytest.fixture(scope="module")
def tiny_task():
    """A small ConvNet overfitted on 120 cifar10-mini images (16x16) and unseen images."""
    ds = load_dataset("builtin:cifar10-mini")
    pick = np.random.default_rng(0).choice(len(ds.train), 520, replace=False)
    subset = ds.train.subset(pick)
    small = subset.x.astype(np.float32).reshape(-1, 16, 2, 16, 2, 3).mean(axis=(2, 4))
    images = type(subset)(small.round().astype(np.uint8), subset.y, subset.classes)
    x, y = to_tensors(images, ds.mean, ds.std)
    members = (x[:120], y[:120])
    nonmembers = (x[120:], y[120:])

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model("convnet", 10, (3, 16, 16), width=16, depth=2)

    def fit(model: torch.nn.Module, xs: torch.Tensor, ys: torch.Tensor, seed: int) -> None:
        train(model, xs, ys, TrainConfig(epochs=25, batch_size=32, lr=0.05, momentum=0.9,
                                         seed=seed))

    target = build()
    fit(target, *members, 0)
    return target, members, nonmembers, build, fit


def test_model_audit_finds_membership_in_an_overfitted_model(tiny_task) -> None:
    """LOSS, LiRA and RMIA all beat chance against a model overfitted on 120 images."""
    target, members, nonmembers, build, fit = tiny_task
    audit = audit_model(target, members, nonmembers, references=2, build_reference=build,
                        train_reference=fit, seed=0)
    names = [a.name for a in audit.attacks]
    assert names == ["LOSS", "LiRA (offline)", "RMIA (offline)"]
    assert audit.accuracy["members"] > audit.accuracy["nonmembers"]
    for attack in audit.attacks:
        assert attack.auc > 0.6, (attack.name, attack.auc)
    assert audit.sizes["nonmembers_scored"] + audit.sizes["reference_pool"] == 400
