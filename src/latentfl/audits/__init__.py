"""Privacy audits: how much synthetic data and models leak about private data.

- ``audit_synthetic``: nearest-neighbour, distance-ratio, share and proximity tests of a synthetic
  set against private training images T, every threshold calibrated on a private holdout H.
- ``audit_model``: LOSS, offline LiRA and offline RMIA membership inference, thresholds set on
  one half of the non-members and judged on the other, one false-flag budget for all attacks,
  "inconclusive" when too few non-members resolve the FPR asked; a check of a DP claim.
- ``one_run_dp_audit``: canaries in one DP-SGD run give a lower bound on epsilon (Steinke,
  Nasr, Jagielski 2023) beside the accountant's epsilon.
- Reports: self-contained HTML plus a JSON twin; ``render_consortium_report`` for the operator.
- File formats: ``save_synthetic``/``load_synthetic`` and ``save_model_file``/``load_model_file``.
"""

import importlib
from typing import Any

# Names resolve on first use, so `latentfl --help` does not import torch and matplotlib.
_EXPORTS: dict[str, str] = {
    "ConsortiumEntry": "latentfl.audits.consortium",
    "DPAudit": "latentfl.audits.dp_audit",
    "DPCheck": "latentfl.audits.dpcheck",
    "DPTraining": "latentfl.audits.dp_audit",
    "HeldOutPoint": "latentfl.audits.operating",
    "ModelAudit": "latentfl.audits.membership",
    "ModelSpec": "latentfl.audits.model_file",
    "ReportScope": "latentfl.audits.consortium",
    "RocCurve": "latentfl.audits.roc",
    "SyntheticAudit": "latentfl.audits.synthetic",
    "SyntheticSet": "latentfl.audits.synthetic_file",
    "Verdict": "latentfl.audits.verdict",
    "auc": "latentfl.audits.roc",
    "audit_model": "latentfl.audits.membership",
    "audit_synthetic": "latentfl.audits.synthetic",
    "binomial_sf": "latentfl.audits.stats",
    "clopper_pearson": "latentfl.audits.stats",
    "dp_bound_check": "latentfl.audits.dpcheck",
    "epsilon_lower_bound": "latentfl.audits.one_run",
    "evaluate_attack": "latentfl.audits.membership",
    "load_model_file": "latentfl.audits.model_file",
    "load_synthetic": "latentfl.audits.synthetic_file",
    "one_run_dp_audit": "latentfl.audits.dp_audit",
    "rank_tail": "latentfl.audits.stats",
    "render_consortium_report": "latentfl.audits.consortium",
    "roc_curve": "latentfl.audits.roc",
    "save_model_file": "latentfl.audits.model_file",
    "save_synthetic": "latentfl.audits.synthetic_file",
    "shareable_aggregates": "latentfl.audits.shareable",
    "tpr_at_fpr": "latentfl.audits.roc",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latentfl.audits' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = [
    "ConsortiumEntry",
    "DPAudit",
    "DPCheck",
    "DPTraining",
    "HeldOutPoint",
    "ModelAudit",
    "ModelSpec",
    "ReportScope",
    "RocCurve",
    "SyntheticAudit",
    "SyntheticSet",
    "Verdict",
    "audit_model",
    "audit_synthetic",
    "auc",
    "binomial_sf",
    "clopper_pearson",
    "dp_bound_check",
    "epsilon_lower_bound",
    "evaluate_attack",
    "load_model_file",
    "load_synthetic",
    "rank_tail",
    "render_consortium_report",
    "roc_curve",
    "save_model_file",
    "save_synthetic",
    "shareable_aggregates",
    "tpr_at_fpr",
]
