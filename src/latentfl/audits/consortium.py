"""The consortium's privacy report, rendered by the operator from what participants shared.

One entry per participant: its DP ledger summary (spent epsilon, delta, own budget), how its
updates are aggregated (which says what the coordinator sees), and the audit aggregates it
chose to share (``report.shareable_aggregates``; numbers only, never images). Flags first.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentfl.audits.html import banner, escape, page
from latentfl.durable import write_atomic


@dataclass(frozen=True)
class ConsortiumEntry:
    """What the report knows about one participant.

    ``ledger``: {"epsilon": spent, "delta": ..., "budget": own epsilon budget or None, and any
    of "steps", "noise_multiplier", "max_grad_norm", "sample_rate"}; None when training is not
    DP. ``audits``: shared aggregates by audit kind ("synthetic-audit", "model-audit").
    """

    participant: str
    aggregation_mode: str
    ledger: dict[str, Any] | None = None
    audits: dict[str, dict[str, Any]] = field(default_factory=dict)


def entry_flags(entry: ConsortiumEntry) -> list[str]:
    """One sentence per problem found for this participant (empty: nothing to flag)."""
    flags = []
    ledger = entry.ledger
    eps = None if ledger is None else ledger.get("epsilon")
    if ledger is None or eps is None or not math.isfinite(float(eps)):
        flags.append("no differential-privacy guarantee on its updates")
    else:
        budget = ledger.get("budget")
        if budget is not None and float(eps) > float(budget):
            flags.append(f"spent epsilon {float(eps):.2f} exceeds its budget {float(budget):.2f}")
    for kind, agg in sorted(entry.audits.items()):
        flagged = [v.get("title", v.get("metric", "?")) for v in agg.get("verdicts", [])
                   if v.get("status") == "flag"]
        if flagged:
            flags.append(f"{kind} flagged: " + "; ".join(flagged))
    return flags


def _ledger_cell(ledger: dict[str, Any] | None) -> str:
    if ledger is None:
        return "not reported (no DP ledger in its updates)"
    parts = [f"epsilon {float(ledger['epsilon']):.2f}" if ledger.get("epsilon") is not None
             else "epsilon unknown"]
    if ledger.get("delta") is not None:
        parts.append(f"delta {float(ledger['delta']):g}")
    if ledger.get("budget") is not None:
        parts.append(f"budget {float(ledger['budget']):.2f}")
    for key in ("steps", "noise_multiplier", "max_grad_norm", "sample_rate"):
        if ledger.get(key) is not None:
            parts.append(f"{key.replace('_', ' ')} {ledger[key]}")
    return ", ".join(parts)


def _audit_cell(audits: dict[str, dict[str, Any]]) -> str:
    if not audits:
        return "<i>no audit shared</i>"
    out = []
    for kind, agg in sorted(audits.items()):
        rows = "".join(
            f"<li><span class='{escape(v.get('status', 'info'))}x'>"
            f"{escape(str(v.get('status', '')).upper())}</span> {escape(v.get('title', ''))}: "
            f"{escape(v.get('value', ''))}</li>" for v in agg.get("verdicts", []))
        out.append(f"<b>{escape(kind)}</b><ul>{rows}</ul>")
    return "".join(out)


def render_consortium_report(entries: list[ConsortiumEntry],
                             out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``consortium_report.html`` and ``consortium_report.json`` into ``out_dir``."""
    flags = {e.participant: entry_flags(e) for e in entries}
    flagged = [p for p, f in flags.items() if f]
    if flagged:
        head = f"ATTENTION: {len(flagged)} of {len(entries)} participants have flags."
    else:
        head = f"No flags: all {len(entries)} participants train with DP and shared clean audits."
    flag_list = "".join(f"<li><b>{escape(p)}</b>: {escape('; '.join(f))}</li>"
                        for p, f in flags.items() if f)
    ordered = sorted(entries, key=lambda e: not flags[e.participant])  # flagged first, stable
    rows = "".join(
        f"<tr><td><b>{escape(e.participant)}</b></td><td>{escape(e.aggregation_mode)}</td>"
        f"<td>{escape(_ledger_cell(e.ledger))}</td><td>{_audit_cell(e.audits)}</td>"
        f"<td class='status {'flag' if flags[e.participant] else 'pass'}'>"
        f"{'FLAG' if flags[e.participant] else 'OK'}</td></tr>" for e in ordered)
    body = (
        "<h1>Consortium privacy report</h1>"
        "<div class='sub'>Per participant: the privacy budget spent (DP ledger), what the "
        "coordinator sees of its updates, and the audit results it chose to share.</div>"
        + banner(bool(flagged), head, "Participants with flags are listed first, with the reasons.")
        + (f"<ul>{flag_list}</ul>" if flag_list else "")
        + "<table class='v'><tr><th>Participant</th><th>Aggregation</th><th>DP ledger</th>"
          "<th>Shared audit results</th><th>Status</th></tr>" + rows + "</table>"
        + "<style>.flagx{color:#c0392b;font-weight:700}.passx{color:#1e8449;font-weight:700}"
          ".infox{color:#555}</style>"
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out / "consortium_report.html", out / "consortium_report.json"
    report = {"kind": "consortium-report", "flagged": flagged,
              "participants": [{"participant": e.participant,
                                "aggregation_mode": e.aggregation_mode, "ledger": e.ledger,
                                "audits": e.audits, "flags": flags[e.participant]}
                               for e in entries]}
    write_atomic(html_path, page("Consortium privacy report", body).encode("utf-8"))
    write_atomic(json_path, (json.dumps(report, indent=2, sort_keys=True, default=str)
                             + "\n").encode())
    return html_path, json_path


__all__ = ["ConsortiumEntry", "entry_flags", "render_consortium_report"]
