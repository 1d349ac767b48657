"""Audit reports: a self-contained HTML page for people and a JSON twin for machines.

The HTML of the synthetic audit shows private images (that is how a person checks a flag), so
it stays at the participant; ``shareable_aggregates`` (``audits/shareable.py``) is the part that
may leave: numbers only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from latentfl.audits import plots
from latentfl.audits.dp_audit import DPAudit
from latentfl.audits.html import (
    banner,
    escape,
    image_png,
    img_tag,
    page,
    verdict_table,
    warnings_block,
)
from latentfl.audits.membership import ModelAudit
from latentfl.audits.shareable import DP_KIND, DP_RESULT_KEYS, json_safe, shareable_aggregates
from latentfl.audits.synthetic import SyntheticAudit, relative_closeness
from latentfl.durable import write_atomic

GRID_ROWS = 8


def synthetic_audit_json(audit: SyntheticAudit, context: dict[str, Any]) -> dict[str, Any]:
    s = audit.synthetic
    return json_safe({
        "kind": "synthetic-audit", "flagged": audit.flagged, "alpha": audit.alpha,
        "warnings": audit.warnings,
        "tests": len(audit.verdicts), "context": context, "sizes": audit.sizes,
        "encoder": audit.encoder, "verdicts": [v.to_json() for v in audit.verdicts],
        "per_synthetic_image": {
            "pixel_rms_to_private": s.pixel_t, "pixel_rms_to_holdout": s.pixel_h,
            "one_minus_ssim_to_private": s.ssim_t, "one_minus_ssim_to_holdout": s.ssim_h,
            "feature_cosine_to_private": s.feature_t, "feature_cosine_to_holdout": s.feature_h,
            "distance_ratio": s.ratio, "nearest_is_private": s.nearest_in_t,
        },
    })


def model_audit_json(audit: ModelAudit, context: dict[str, Any]) -> dict[str, Any]:
    attacks = []
    for at in audit.attacks:
        entry: dict[str, Any] = {"name": at.name, "auc": at.auc, "status": at.status,
                                 "operating_points": [p.to_json() for p in at.operating_points]}
        if at.dp is not None:
            entry["dp_check"] = {k: getattr(at.dp, k) for k in (
                "epsilon", "delta", "points_checked", "violations", "worst_fpr", "worst_tpr",
                "worst_margin", "epsilon_lower_bound")}
        attacks.append(entry)
    return json_safe({
        "kind": "model-audit", "flagged": audit.flagged, "inconclusive": audit.inconclusive,
        "alpha": audit.alpha, "warnings": audit.warnings, "context": context,
        "sizes": audit.sizes, "accuracy": audit.accuracy, "dp_claim": audit.dp_claim,
        "verdicts": [v.to_json() for v in audit.verdicts], "attacks": attacks,
    })


def _closest_grid(audit: SyntheticAudit, synthetic: np.ndarray, private: np.ndarray,
                  holdout: np.ndarray) -> str:
    s = audit.synthetic
    closeness = relative_closeness(s.pixel_t, s.pixel_h)
    order = np.argsort(closeness, kind="stable")[:GRID_ROWS]
    pixel = next(v for v in audit.verdicts if v.metric == "pixel_nn")
    limit = pixel.numbers["threshold_ratio"]
    rows = ["<tr><th>synthetic image</th><th>nearest training image</th>"
            "<th>nearest holdout image</th><th></th></tr>"]
    for i in order:
        cells = [
            img_tag(image_png(synthetic[i]), f"synthetic {i}") + f"<br>synthetic #{i}",
            img_tag(image_png(private[s.index_t[i]]), "nearest training image")
            + f"<br>RMS {s.pixel_t[i]:.3f}, r = {s.ratio[i]:.2f}",
            img_tag(image_png(holdout[s.index_h[i]]), "nearest holdout image")
            + f"<br>RMS {s.pixel_h[i]:.3f}",
            f"training/holdout distance<br><b>{closeness[i]:.2f}</b><br>"
            + ("<span class='copy'>NEAR-COPY of a training image</span>"
               if closeness[i] < limit else "<span class='okc'>no closer than chance</span>"),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return '<table class="grid">' + "".join(rows) + "</table>"


def render_synthetic_html(audit: SyntheticAudit, synthetic: np.ndarray, private: np.ndarray,
                          holdout: np.ndarray, context: dict[str, Any]) -> str:
    flags = [v for v in audit.verdicts if v.flagged]
    n = len(audit.verdicts)
    sz = audit.sizes
    if flags:
        head = (f"LEAK SUSPECTED: {len(flags)} of {n} checks found synthetic images closer to "
                "your training images than chance allows.")
    else:
        head = (f"NO LEAK DETECTED: none of the {n} checks found the synthetic images closer to "
                "your training images than to your unseen (holdout) images.")
    detail = (f"Compared {sz['synthetic']} synthetic images with your {sz['private']} training "
              f"images and {sz['holdout']} holdout images that never trained anything. On a "
              f"clean synthetic set this table raises any flag with probability at most "
              f"{100 * audit.alpha:.0f}%.")
    if flags and {v.metric for v in flags} <= {"nn_share", "proximity_mia"}:
        detail += (" No near-copies were found: the flag says the synthetic set resembles your "
                   "training images more than your holdout images. Check first that the holdout "
                   "is drawn like your training data (same classes, same sources).")
    elif flags:
        detail += (" Look at the image pairs below: a synthetic image that shows the same "
                   "picture as its nearest training image discloses that image.")
    s, cal = audit.synthetic, audit.calibration
    hist = plots.distance_histogram(
        s.pixel_t, s.pixel_h, cal.pixel_t, xlabel="RMS pixel distance (0 = identical)",
        title="Distance of each synthetic image to its nearest training / holdout image")
    roc = plots.roc_plot({"synthetic set": audit.proximity_roc,
                          f"baseline: {sz['baseline']} real training images": audit.baseline_roc},
                         title="Membership inference from the images (log axes)")
    body = (
        "<h1>Synthetic-data privacy audit</h1>"
        f"<div class='sub'>{escape(context.get('synthetic', ''))} &middot; private data "
        f"{escape(context.get('private', ''))} &middot; feature encoder: "
        f"{escape(audit.encoder)}</div>"
        + banner(bool(flags), head, detail)
        + warnings_block(audit.warnings)
        + verdict_table(audit.verdicts,
                        f"Naive baseline: {sz['baseline']} real training images instead")
        + "<p class='note'>Naive baseline: what the same checks show if the consortium had "
          "received that many of your real training images instead of synthetic ones, i.e. "
          "the worst case. This page shows your private images: keep it inside your "
          "institution; the JSON file's verdicts are the part meant for sharing.</p>"
        + f"<h2>The {min(GRID_ROWS, sz['synthetic'])} synthetic images closest to your "
          "training data</h2><p class='note'>Sorted by distance to the nearest training image "
          "divided by distance to the nearest holdout image: near 0 means a copy of a "
          "training image, near 1 or above means no closer to training than to unseen "
          "images.</p>"
        + _closest_grid(audit, synthetic, private, holdout)
        + "<h2>Distances</h2>" + img_tag(hist, "distance histogram", "plot")
        + "<h2>Membership inference</h2>" + img_tag(roc, "ROC curve", "plot")
    )
    return page("Synthetic-data privacy audit", body)


def render_model_html(audit: ModelAudit, context: dict[str, Any]) -> str:
    flags = [v for v in audit.verdicts if v.flagged]
    dp_broken = [v for v in flags if v.metric.startswith("dp_bound")]
    sz = audit.sizes
    if dp_broken:
        outcome = "flag"
        head = "DP GUARANTEE VIOLATED: an attack beat the model's privacy claim. This is a bug."
    elif flags:
        outcome = "flag"
        head = (f"MEMBERSHIP LEAK: {len(flags)} attack(s) tell your training examples from "
                "unseen ones better than guessing.")
    elif audit.inconclusive:
        outcome = "inconclusive"
        need = max(p.nonmembers_needed for a in audit.attacks for p in a.operating_points[:1])
        head = (f"INCONCLUSIVE: no attack did measurably better than guessing, but "
                f"{sz['nonmembers_scored']} scored unseen examples cannot resolve a 1% false-"
                f"accusation rate; rerun with at least {need:,} scored (twice that with "
                "reference models).")
    else:
        outcome = "pass"
        head = "NO MEMBERSHIP LEAK DETECTED: no attack did measurably better than guessing."
    claim = ("no DP claim attached" if audit.dp_claim is None else
             f"DP claim: epsilon = {audit.dp_claim[0]:g}, delta = {audit.dp_claim[1]:g}")
    detail = (f"{sz['members']} training examples vs {sz['nonmembers_scored']} unseen examples "
              f"({sz['nonmembers_calibration']} set each threshold, {sz['nonmembers_test']} "
              f"measure its false-accusation rate); {sz['references']} reference models trained "
              f"by the audit on {sz['reference_pool']} other unseen examples; {claim}. Accuracy "
              f"{100 * audit.accuracy['members']:.1f}% on members, "
              f"{100 * audit.accuracy['nonmembers']:.1f}% on non-members. A model that never "
              f"trained on these examples gets any flag with probability at most "
              f"{100 * audit.alpha:g}%.")
    roc = plots.roc_plot({a.name: a.roc for a in audit.attacks},
                         title="Membership inference against the model (log axes)",
                         dp_claim=audit.dp_claim)
    loss = audit.attacks[0]
    hist = plots.score_histogram(-loss.member_scores, -loss.nonmember_scores,
                                 xlabel="per-example loss", title="Loss of members vs non-members")
    body = (
        "<h1>Model privacy audit</h1>"
        f"<div class='sub'>model {escape(context.get('model', ''))} &middot; members "
        f"{escape(context.get('members', ''))} &middot; non-members "
        f"{escape(context.get('nonmembers', ''))}</div>"
        + banner(outcome, head, detail)
        + warnings_block(audit.warnings)
        + verdict_table(audit.verdicts, None)
        + "<p class='note'>TPR: share of training examples an attacker finds; FPR: share of "
          "unseen examples wrongly accused, measured on unseen examples that did not set the "
          "threshold. Brackets are exact Clopper-Pearson intervals at the level shown in the "
          "'Flag when' column (the false-flag budget split over every attack and FPR). "
          "INCONCLUSIVE: too few unseen examples to measure that rare an FPR.</p>"
        + "<h2>ROC curves</h2>" + img_tag(roc, "ROC curves", "plot")
        + "<h2>Losses</h2>" + img_tag(hist, "loss histogram", "plot")
    )
    return page("Model privacy audit", body)


def dp_audit_json(audit: DPAudit, context: dict[str, Any]) -> dict[str, Any]:
    """The one-run DP audit's numbers: aggregate only (no canary, image or per-example score)."""
    return json_safe({
        "kind": DP_KIND, "flagged": audit.flagged, "warnings": audit.warnings,
        "context": context, "sizes": {"canaries": audit.canaries,
                                      "training_examples": audit.training_examples},
        "result": {k: getattr(audit, k) for k in DP_RESULT_KEYS},
        "verdicts": [v.to_json() for v in audit.verdicts],
    })


def render_dp_html(audit: DPAudit, context: dict[str, Any]) -> str:
    verdict = audit.verdicts[0]
    bound = f"epsilon >= {audit.epsilon_lower_bound:.2f}"
    heads = {
        "flag": f"DP CLAIM VIOLATED: this run provably leaks {bound}, more than the claimed "
                f"epsilon {audit.claimed_epsilon or 0:.2f}. This is a bug.",
        # a one-run audit gives a lower bound: it can catch a violation, never prove the claim
        "pass": f"NO VIOLATION FOUND: measured {bound}, within the claimed epsilon "
                f"{audit.claimed_epsilon or 0:.2f}. A one-run audit only bounds leakage from "
                "below: it found no bug, it does not prove the claim.",
        "inconclusive": f"INCONCLUSIVE: measured {bound}, within the claimed epsilon "
                        f"{audit.claimed_epsilon or 0:.2f}, but {audit.canaries} canaries can "
                        f"prove at most {audit.max_provable:.2f}: a violation could not show.",
        "info": f"NO DP: trained without DP-SGD; one run with canaries proves {bound}.",
    }
    spent = ("none (trained without DP-SGD)" if audit.accountant_epsilon is None
             else f"{audit.accountant_epsilon:.3f} at delta {audit.delta:g}")
    detail = (f"{audit.canaries} canaries ({audit.canaries_included} trained on) beside "
              f"{audit.training_examples} training examples, {audit.steps} steps, noise "
              f"multiplier {audit.noise_multiplier if audit.noise_multiplier else 'none'}; "
              f"accountant epsilon {spent}. The bound holds with {100 * audit.confidence:g}% "
              "confidence."
              + (" The noise multiplier is derived from the target epsilon for this audit's own "
                 "run (its examples plus canaries, batch size and epochs), so it can differ "
                 "from the one the site trains with at the same target."
                 if audit.noise_multiplier else ""))
    rows = [("Canaries", audit.canaries), ("Canaries trained on", audit.canaries_included),
            ("Training examples", audit.training_examples), ("Guesses made", audit.guesses),
            ("Correct guesses", audit.correct),
            ("Epsilon lower bound (measured)", f"{audit.epsilon_lower_bound:.3f}"),
            ("Largest bound these canaries can prove", f"{audit.max_provable:.3f}"),
            ("Accountant's epsilon", spent),
            ("Claim checked", "none" if audit.claimed_epsilon is None
             else f"{audit.claimed_epsilon:.3f}")]
    table = ('<table class="v">' + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
                                             for k, v in rows) + "</table>")
    body = (
        "<h1>DP-SGD audit (one training run)</h1>"
        f"<div class='sub'>data {escape(context.get('data', ''))} &middot; model "
        f"{escape(context.get('model', ''))}, {escape(context.get('epochs', ''))} epochs</div>"
        + banner(verdict.status if verdict.status != "info" else "inconclusive", heads[verdict.status],
                 detail)
        + warnings_block(audit.warnings)
        + verdict_table(audit.verdicts, None)
        + "<h2>Numbers behind the bound</h2>" + table
        + "<p class='note'>Method: Steinke, Nasr and Jagielski (NeurIPS 2023), 'Privacy auditing "
          "with one (1) training run'. Each canary (a noise image with a random label) is "
          "trained on with probability 1/2; the auditor guesses 'in' for the highest-scored "
          "and 'out' for the lowest-scored canaries. Under epsilon-DP each guess is right "
          "with probability at most e^eps / (1 + e^eps), so many right guesses prove a lower "
          "bound on epsilon. Only these aggregate numbers are in this report.</p>"
    )
    return page("DP-SGD audit", body)


def write_report(out_dir: Path | str, stem: str, html_text: str,
                 report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``stem.html`` and ``stem.json`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out / f"{stem}.html", out / f"{stem}.json"
    write_atomic(html_path, html_text.encode("utf-8"))
    write_atomic(json_path, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    return html_path, json_path


__all__ = ["dp_audit_json", "model_audit_json", "render_dp_html", "render_model_html", "render_synthetic_html",
           "shareable_aggregates", "synthetic_audit_json", "write_report"]
