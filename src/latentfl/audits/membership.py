"""The model audit: membership inference against a trained model, and its DP claim.

Members are examples the model trained on; non-members are examples of the same distribution it
never saw. Half of the non-members train the audit's own reference models (each on a random half
of that pool) and serve as RMIA's population; the other half are the non-members the attacks
are scored on, so no reference model ever trained on an example being scored. The scored
non-members are halved once more: one half sets each attack's threshold, the other measures its
FPR (``audits/operating.py``), and all attacks and FPR targets share one false-flag budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
from latentfl.audits.operating import (
    HeldOutPoint,
    held_out_point,
    nonmembers_needed,
    split_halves,
)
from latentfl.audits.roc import RocCurve, auc, roc_curve
from latentfl.audits.verdict import Verdict
from latentfl.log import get_logger
from latentfl.seeding import derive_seed

FPR_TARGETS = (0.01, 0.001)
SMALL_MEMBERS = 200  # below this many members (or scored non-members) the report warns


@dataclass(frozen=True)
class AttackResult:
    name: str
    member_scores: np.ndarray
    nonmember_scores: np.ndarray
    roc: RocCurve  # all scored non-members, for the plot and the DP check
    auc: float
    operating_points: list[HeldOutPoint]  # one per FPR target, judged on held-out non-members
    dp: DPCheck | None = None

    @property
    def status(self) -> str:
        """``flag`` if any target flags, else the 1%-FPR target's ``pass``/``inconclusive``."""
        statuses = [p.status for p in self.operating_points]
        return "flag" if "flag" in statuses else statuses[0]


@dataclass(frozen=True)
class ModelAudit:
    attacks: list[AttackResult]
    verdicts: list[Verdict]
    sizes: dict[str, int]
    accuracy: dict[str, float] = field(default_factory=dict)
    dp_claim: tuple[float, float] | None = None
    alpha: float = 0.05
    warnings: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return any(v.flagged for v in self.verdicts)

    @property
    def inconclusive(self) -> bool:
        return not self.flagged and any(v.status == "inconclusive" for v in self.verdicts)


def evaluate_attack(name: str, member_scores: np.ndarray, nonmember_scores: np.ndarray, *,
                    level: float, seed: int = 0, dp_claim: tuple[float, float] | None = None,
                    dp_alpha: float = 0.05) -> AttackResult:
    """ROC and AUC on all non-members; each FPR target on held-out halves at ``level``.

    The non-members are split into a calibration and a test half by ``seed`` (the same split for
    every attack of one audit, as they score the same non-members in the same order).
    """
    member_scores = np.asarray(member_scores, dtype=np.float64)
    nonmember_scores = np.asarray(nonmember_scores, dtype=np.float64)
    curve = roc_curve(member_scores, nonmember_scores)
    cal, test = split_halves(nonmember_scores.size,
                             np.random.default_rng(derive_seed(seed, "halves")))
    points = [held_out_point(member_scores, nonmember_scores[cal], nonmember_scores[test],
                             target, level) for target in FPR_TARGETS]
    dp = None if dp_claim is None else dp_bound_check(curve, *dp_claim, alpha=dp_alpha)
    return AttackResult(name, member_scores, nonmember_scores, curve,
                        auc(member_scores, nonmember_scores), points, dp)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _point_text(p: HeldOutPoint) -> str:
    text = (f"at FPR {100 * p.target_fpr:g}%: TPR {_pct(p.tpr)}% [{_pct(p.tpr_low)}, "
            f"{_pct(p.tpr_high)}] of {p.members} members vs held-out FPR {_pct(p.fpr)}% "
            f"[{_pct(p.fpr_low)}, {_pct(p.fpr_high)}] of {p.test_nonmembers} non-members")
    if p.status == "inconclusive":
        text += f" (INCONCLUSIVE: needs {p.nonmembers_needed:,} scored non-members)"
    return text


def _numbers(at: AttackResult) -> dict[str, Any]:
    out: dict[str, Any] = {"auc": at.auc}
    for p in at.operating_points:
        tag = f"{100 * p.target_fpr:g}pct".replace(".", "_")
        out.update({f"tpr_at_{tag}": p.tpr, f"tpr_at_{tag}_ci": [p.tpr_low, p.tpr_high],
                    f"heldout_fpr_at_{tag}": p.fpr,
                    f"heldout_fpr_at_{tag}_ci": [p.fpr_low, p.fpr_high],
                    f"nonmembers_needed_{tag}": p.nonmembers_needed})
    first = at.operating_points[0]
    out.update({"members": first.members, "nonmembers_calibration": first.calibration_nonmembers,
                "nonmembers_test": first.test_nonmembers})
    return out


_EXPLAIN = {
    "flag": "An attacker who sees the model tells your training examples apart from unseen ones "
            "more often than its false accusations of unseen ones allow by chance.",
    "pass": "No measurable edge: at this sample size the attack finds training examples no more "
            "often than it wrongly accuses unseen ones.",
    "inconclusive": "Too few unseen examples to measure the rare false-accusation rate asked "
                    "for: this neither clears nor convicts the model. Rerun with at least the "
                    "number of non-members named.",
}


def attack_verdicts(attacks: list[AttackResult], alpha: float = 0.05) -> list[Verdict]:
    """One row per attack (the family shares ``alpha``), one per DP check."""
    out = []
    tests = sum(len(at.operating_points) for at in attacks)
    for at in attacks:
        first = at.operating_points[0]
        status = at.status
        out.append(Verdict(
            metric=f"mia_{at.name.lower().replace(' ', '_')}",
            title=f"Membership inference: {at.name}",
            value=f"AUC {at.auc:.3f}; " + "; ".join(_point_text(p) for p in at.operating_points),
            threshold=(f"TPR interval lies wholly above the held-out FPR interval (exact "
                       f"{100 * (1 - first.level):.2f}% intervals: alpha {alpha:g} shared by "
                       f"{tests} tests)"),
            calibration=(f"threshold set on {first.calibration_nonmembers} non-members, FPR "
                         f"measured on {first.test_nonmembers} others"),
            status=status, alpha=first.level, explanation=_EXPLAIN[status],
            numbers=_numbers(at)))
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


def size_warnings(members: int, scored_nonmembers: int) -> list[str]:
    """Plain sentences for a report when the samples behind its figures are small."""
    out = []
    if min(members, scored_nonmembers) < SMALL_MEMBERS:
        out.append(f"Small sample: {members} members and {scored_nonmembers} scored non-members "
                   f"(fewer than {SMALL_MEMBERS}); every interval is wide and a pass says little.")
    for target in FPR_TARGETS:
        need = nonmembers_needed(target)
        if scored_nonmembers < need:
            out.append(f"FPR {100 * target:g}% cannot be resolved with {scored_nonmembers} scored "
                       f"non-members: it needs {need:,} (half to set the threshold, half to "
                       "measure it).")
    if members != scored_nonmembers:
        out.append(f"Unequal sizes ({members} members, {scored_nonmembers} scored non-members) "
                   "are used as they are: TPR and FPR are rates within each group, so chance "
                   "stays at TPR = FPR and AUC = 0.5.")
    return out


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
    With ``references=0`` only the LOSS attack runs, on all non-members. ``alpha`` is the chance
    that a model which never trained on the members gets any membership flag, over all attacks
    and FPR targets together (Bonferroni).
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
        pool_idx, eval_idx = split_halves(len(xn), rng)
    else:
        pool_idx, eval_idx = np.array([], dtype=np.int64), np.arange(len(xn))
    xe, ye = xn[eval_idx], yn[eval_idx]
    target_m = model_outputs(model, xm, ym, device=device)
    target_e = model_outputs(model, xe, ye, device=device)
    level = alpha / ((3 if references > 0 else 1) * len(FPR_TARGETS))

    def judge(name: str, member_scores: np.ndarray, nonmember_scores: np.ndarray) -> AttackResult:
        return evaluate_attack(name, member_scores, nonmember_scores, level=level, seed=seed,
                               dp_claim=dp_claim, dp_alpha=alpha)

    attacks = [judge("LOSS", loss_scores(target_m), loss_scores(target_e))]
    if references > 0:
        xp, yp = xn[pool_idx], yn[pool_idx]
        target_p = model_outputs(model, xp, yp, device=device)
        refs_m: list[Outputs] = []
        refs_e: list[Outputs] = []
        pop = np.full((references, len(xp)), np.nan)
        for k in range(references):
            inside, _ = split_halves(len(xp), np.random.default_rng(derive_seed(seed, "split", k)))
            ref = build_reference()
            train_reference(ref, xp[inside], yp[inside], derive_seed(seed, "reference", k))
            refs_m.append(model_outputs(ref, xm, ym, device=device))
            refs_e.append(model_outputs(ref, xe, ye, device=device))
            out_p = model_outputs(ref, xp, yp, device=device).prob
            out_mask = np.ones(len(xp), bool)
            out_mask[inside] = False
            pop[k, out_mask] = out_p[out_mask]
            log.info("reference_trained", index=k, examples=int(inside.size))
        attacks.append(judge("LiRA (offline)", lira_offline_scores(target_m, refs_m),
                             lira_offline_scores(target_e, refs_e)))
        attacks.append(judge("RMIA (offline)", rmia_offline_scores(target_m, refs_m, target_p, pop),
                             rmia_offline_scores(target_e, refs_e, target_p, pop)))
    accuracy = {"members": float(target_m.correct.mean()),
                "nonmembers": float(target_e.correct.mean())}
    return ModelAudit(
        attacks=attacks, verdicts=attack_verdicts(attacks, alpha),
        sizes={"members": len(xm), "nonmembers_scored": len(xe),
               "nonmembers_calibration": attacks[0].operating_points[0].calibration_nonmembers,
               "nonmembers_test": attacks[0].operating_points[0].test_nonmembers,
               "reference_pool": int(pool_idx.size), "references": references},
        accuracy=accuracy, dp_claim=dp_claim, alpha=alpha,
        warnings=size_warnings(len(xm), len(xe)))


__all__ = ["FPR_TARGETS", "AttackResult", "ModelAudit", "attack_verdicts", "audit_model",
           "evaluate_attack", "size_warnings"]
