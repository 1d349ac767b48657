"""Privacy audits: how much synthetic data and models leak about private data.

- ``audit_synthetic``: nearest-neighbour, distance-ratio, share and proximity tests of a synthetic
  set against private training images T, every threshold calibrated on a private holdout H.
- ``audit_model``: LOSS, offline LiRA and offline RMIA membership inference with Clopper-Pearson
  intervals, and a check of a DP claim at every operating point.
- Reports: self-contained HTML plus a JSON twin; ``render_consortium_report`` for the operator.
- File formats: ``save_synthetic``/``load_synthetic`` and ``save_model_file``/``load_model_file``.
"""

import importlib
from typing import Any

# Names resolve on first use, so `latentfl --help` does not import torch and matplotlib.
_EXPORTS: dict[str, str] = {
    "ConsortiumEntry": "latentfl.audits.consortium",
    "DPCheck": "latentfl.audits.dpcheck",
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
    "evaluate_attack": "latentfl.audits.membership",
    "load_model_file": "latentfl.audits.model_file",
    "load_synthetic": "latentfl.audits.synthetic_file",
    "rank_tail": "latentfl.audits.stats",
    "render_consortium_report": "latentfl.audits.consortium",
    "roc_curve": "latentfl.audits.roc",
    "save_model_file": "latentfl.audits.model_file",
    "save_synthetic": "latentfl.audits.synthetic_file",
    "shareable_aggregates": "latentfl.audits.report",
    "tpr_at_fpr": "latentfl.audits.roc",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latentfl.audits' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = [
    "ConsortiumEntry",
    "DPCheck",
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
