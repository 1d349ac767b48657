"""The model audit: membership inference against a trained model, and its DP claim.

Members are examples the model trained on; non-members are examples of the same distribution it
never saw. Half of the non-members train the audit's own reference models (each on a random half
of that pool) and serve as RMIA's population; the other half are the non-members the attacks
are scored on, so no reference model ever trained on an example being scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from latentfl.audits.attacks import (
    Outputs,
    lira_offline_scores,
    loss_scores,
    model_outputs,
    rmia_offline_scores,
)
from latentfl.audits.dpcheck import DPCheck, dp_bound_check
from latentfl.audits.roc import RocCurve, auc, roc_curve, tpr_at_fpr
from latentfl.audits.stats import clopper_pearson
from latentfl.audits.verdict import Verdict
from latentfl.log import get_logger
from latentfl.seeding import derive_seed

FPR_TARGETS = (0.01, 0.001)


@dataclass(frozen=True)
class AttackResult:
    name: str
    member_scores: np.ndarray
    nonmember_scores: np.ndarray
    roc: RocCurve
    auc: float
    operating_points: list[dict[str, float]]  # per FPR target: fpr, tpr, tpr_low, tpr_high
    dp: DPCheck | None = None


@dataclass(frozen=True)
class ModelAudit:
    attacks: list[AttackResult]
    verdicts: list[Verdict]
    sizes: dict[str, int]
    accuracy: dict[str, float] = field(default_factory=dict)
    dp_claim: tuple[float, float] | None = None

    @property
    def flagged(self) -> bool:
        return any(v.flagged for v in self.verdicts)


def evaluate_attack(name: str, member_scores: np.ndarray, nonmember_scores: np.ndarray, *,
                    dp_claim: tuple[float, float] | None = None,
                    alpha: float = 0.05) -> AttackResult:
    """ROC, AUC, TPR at each FPR target with (1 - alpha) Clopper-Pearson intervals, DP check."""
    curve = roc_curve(member_scores, nonmember_scores)
    points = []
    for target in FPR_TARGETS:
        op = tpr_at_fpr(curve, target)
        lo, hi = clopper_pearson(op.true_positives, op.num_members, alpha=alpha)
        points.append({"target_fpr": target, "fpr": op.fpr, "tpr": op.tpr,
                       "tpr_low": float(lo[0]), "tpr_high": float(hi[0]),
                       "threshold": op.threshold})
    dp = None if dp_claim is None else dp_bound_check(curve, *dp_claim, alpha=alpha)
    return AttackResult(name, np.asarray(member_scores), np.asarray(nonmember_scores), curve,
                        auc(member_scores, nonmember_scores), points, dp)


def attack_verdicts(attacks: list[AttackResult]) -> list[Verdict]:
    """One row per attack (flag: TPR at 1% FPR provably above 1%), one per DP check."""
    out = []
    for at in attacks:
        p1, p01 = at.operating_points
        leaks = p1["tpr_low"] > p1["target_fpr"]
        out.append(Verdict(
            metric=f"mia_{at.name.lower().replace(' ', '_')}",
            title=f"Membership inference: {at.name}",
            value=(f"AUC {at.auc:.3f}; TPR {100 * p1['tpr']:.2f}% "
                   f"[{100 * p1['tpr_low']:.2f}, {100 * p1['tpr_high']:.2f}] at FPR 1%; "
                   f"TPR {100 * p01['tpr']:.2f}% [{100 * p01['tpr_low']:.2f}, "
                   f"{100 * p01['tpr_high']:.2f}] at FPR 0.1%"),
            threshold="95% interval of TPR at 1% FPR lies above 1% (better than guessing)",
            calibration=f"threshold set on {at.roc.num_nonmembers} non-members",
            status="flag" if leaks else "pass",
            explanation="An attacker who sees the model tells your training examples apart "
                        "from unseen ones. TPR equal to FPR means guessing; AUC 0.5 means none.",
            numbers={"auc": at.auc, "tpr_at_1pct": p1["tpr"], "tpr_at_0.1pct": p01["tpr"],
                     "tpr_at_1pct_ci": [p1["tpr_low"], p1["tpr_high"]],
                     "tpr_at_0.1pct_ci": [p01["tpr_low"], p01["tpr_high"]]}))
        if at.dp is not None:
            d = at.dp
            out.append(Verdict(
                metric=f"dp_bound_{at.name.lower().replace(' ', '_')}",
                title=f"DP claim checked against {at.name}",
                value=((f"VIOLATED at {d.violations} of {d.points_checked} operating points"
                        if d.violated else f"holds at all {d.points_checked} operating points")
                       + f"; the attack proves epsilon >= {d.epsilon_lower_bound:.2f}"),
                threshold=f"TPR <= e^{d.epsilon:g} x FPR + {d.delta:g} at every point",
                calibration="one-sided 95% Clopper-Pearson bounds, Bonferroni over all points",
                status="flag" if d.violated else "pass",
                explanation=("VIOLATION: the attack does better than the claimed DP guarantee "
                             "allows. The guarantee is wrong: this is a bug to report."
                             if d.violated else
                             "The attack stays within what the claimed DP guarantee allows."),
                numbers={"violations": d.violations, "epsilon": d.epsilon, "delta": d.delta,
                         "epsilon_lower_bound": d.epsilon_lower_bound,
                         "worst_margin": d.worst_margin}))
    return out


def _split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def audit_model(model: nn.Module, members: tuple[torch.Tensor, torch.Tensor],
                nonmembers: tuple[torch.Tensor, torch.Tensor], *, references: int = 2,
                build_reference: Callable[[], nn.Module] | None = None,
                train_reference: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], None]
                | None = None, seed: int = 0,
                dp_claim: tuple[float, float] | None = None, device: str = "cpu",
                alpha: float = 0.05) -> ModelAudit:
    """Run LOSS, offline LiRA and offline RMIA against ``model``.

    ``build_reference()`` returns a fresh untrained model of the target's architecture;
    ``train_reference(model, x, y, seed)`` trains it in place. Inputs are normalised tensors.
    With ``references=0`` only the LOSS attack runs, on all non-members.
    """
    log = get_logger("audit.model")
    xm, ym = members
    xn, yn = nonmembers
    rng = np.random.default_rng(seed)
    if references > 0:
        if build_reference is None or train_reference is None:
            raise ValueError("reference attacks need build_reference and train_reference")
        if len(xn) < 4:
            raise ValueError(f"reference attacks need at least 4 non-members, got {len(xn)}")
        pool_idx, eval_idx = _split(len(xn), rng)
    else:
        pool_idx, eval_idx = np.array([], dtype=np.int64), np.arange(len(xn))
    xe, ye = xn[eval_idx], yn[eval_idx]
    target_m = model_outputs(model, xm, ym, device=device)
    target_e = model_outputs(model, xe, ye, device=device)
    attacks = [evaluate_attack("LOSS", loss_scores(target_m), loss_scores(target_e),
                               dp_claim=dp_claim, alpha=alpha)]
    if references > 0:
        xp, yp = xn[pool_idx], yn[pool_idx]
        target_p = model_outputs(model, xp, yp, device=device)
        refs_m: list[Outputs] = []
        refs_e: list[Outputs] = []
        pop = np.full((references, len(xp)), np.nan)
        for k in range(references):
            inside, _ = _split(len(xp), np.random.default_rng(derive_seed(seed, "split", k)))
            ref = build_reference()
            train_reference(ref, xp[inside], yp[inside], derive_seed(seed, "reference", k))
            refs_m.append(model_outputs(ref, xm, ym, device=device))
            refs_e.append(model_outputs(ref, xe, ye, device=device))
            out_p = model_outputs(ref, xp, yp, device=device).prob
            out_mask = np.ones(len(xp), bool)
            out_mask[inside] = False
            pop[k, out_mask] = out_p[out_mask]
            log.info("reference_trained", index=k, examples=int(inside.size))
        attacks.append(evaluate_attack(
            "LiRA (offline)", lira_offline_scores(target_m, refs_m),
            lira_offline_scores(target_e, refs_e), dp_claim=dp_claim, alpha=alpha))
        attacks.append(evaluate_attack(
            "RMIA (offline)", rmia_offline_scores(target_m, refs_m, target_p, pop),
            rmia_offline_scores(target_e, refs_e, target_p, pop), dp_claim=dp_claim,
            alpha=alpha))
    accuracy = {"members": float(target_m.correct.mean()),
                "nonmembers": float(target_e.correct.mean())}
    return ModelAudit(
        attacks=attacks, verdicts=attack_verdicts(attacks),
        sizes={"members": len(xm), "nonmembers_scored": len(xe),
               "reference_pool": int(pool_idx.size), "references": references},
        accuracy=accuracy, dp_claim=dp_claim)


__all__ = ["AttackResult", "ModelAudit", "attack_verdicts", "audit_model", "evaluate_attack"]
