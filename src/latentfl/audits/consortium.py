"""The consortium's privacy report, rendered by the operator from what participants shared.

One entry per participant: its DP ledger summary (spent epsilon, delta), its own budget as its
agent stated it (``[privacy.policy] max_epsilon``, in its HELLO), how its
updates are aggregated (which says what the coordinator sees), the tasks it declined (its own
site policy, a failed run), the audit aggregates it shared (``shareable.shareable_aggregates``;
numbers only, never images) and the audits operators requested of it, with their state (a
site's refusal says why). Flags first.

A site is flagged for what reached the coordinator: updates without a DP ledger, a budget
passed, a flagged audit. A site that declined its tasks sent nothing for those rounds, so it is
listed as having declined, never flagged for it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentfl.audits.html import banner, escape, page
from latentfl.durable import write_atomic


@dataclass(frozen=True)
class ConsortiumEntry:
    """What the report knows about one participant.

    ``ledger``: {"epsilon": spent, "delta": ..., and any of "steps", "noise_multiplier",
    "max_grad_norm", "sample_rate"}; None when training is not DP. ``budget``: the site's own
    epsilon budget (None: "no budget set"), meaningful when ``budget_stated`` (False: its
    agent never said, e.g. it predates the field or never connected). ``audits``: shared aggregates by report kind ("synthetic-audit", "dp-audit").
    ``audit_requests``: operators' requests of audits at this site, oldest first, each with
    ``audit``, ``requested`` (time), ``state`` ("waiting", "delivered", "answered",
    "declined") and, when declined, ``reason`` and ``detail``.
    """

    participant: str
    aggregation_mode: str
    ledger: dict[str, Any] | None = None
    audits: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: updates the coordinator accepted from it (None: not known, taken as some)
    updates: int | None = None
    #: tasks it declined, by reason (a site-policy rule such as budget_exceeded, or a Reason)
    declined: dict[str, int] = field(default_factory=dict)
    audit_requests: list[dict[str, Any]] = field(default_factory=list)
    #: rounds in which the defence set its update aside: {"round", "count", "reasons"}
    set_aside: list[dict[str, Any]] = field(default_factory=list)
    budget: float | None = None
    budget_stated: bool = False


@dataclass(frozen=True)
class ReportScope:
    """What the report covers: the session, the rounds closed of those planned, and when."""

    session: str
    rounds_done: int
    rounds_planned: int
    generated: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.generated))
        covered = (f"rounds 1 to {self.rounds_done}" if self.rounds_done > 1
                   else "round 1" if self.rounds_done == 1 else "no round closed yet")
        return (f"session {self.session}: {covered} of {self.rounds_planned} planned; "
                f"generated {when}")


def entry_flags(entry: ConsortiumEntry) -> list[str]:
    """One sentence per problem found for this participant (empty: nothing to flag)."""
    flags = []
    ledger = entry.ledger
    eps = None if ledger is None else ledger.get("epsilon")
    contributed = entry.updates is None or entry.updates > 0
    if contributed and (ledger is None or eps is None or not math.isfinite(float(eps))):
        flags.append("no differential-privacy guarantee on its updates")
    elif eps is not None and entry.budget is not None and float(eps) > entry.budget:
        flags.append(f"spent epsilon {float(eps):.2f} exceeds its budget {entry.budget:.2f}")
    for kind, agg in sorted(entry.audits.items()):
        flagged = [v.get("title", v.get("metric", "?")) for v in agg.get("verdicts", [])
                   if v.get("status") == "flag"]
        if flagged:
            flags.append(f"{kind} flagged: " + "; ".join(flagged))
    if entry.set_aside:
        total = sum(int(r.get("count", 1)) for r in entry.set_aside)
        rounds = ", ".join(str(r["round"]) for r in entry.set_aside)
        flags.append(f"{total} update{'s' if total > 1 else ''} set aside by the robustness "
                     f"defence (round{'s' if len(entry.set_aside) > 1 else ''} {rounds})")
    return flags


#: How each ledger number is shown: epsilon to 2 decimals, the rest to 3 significant digits.
_LEDGER_FORMATS = (("delta", "delta {:.2g}"),
                   ("steps", "{:.0f} DP-SGD steps"), ("noise_multiplier", "noise multiplier {:.3g}"),
                   ("max_grad_norm", "clip norm {:.3g}"), ("sample_rate", "sample rate {:.3g}"))


def _ledger_cell(entry: ConsortiumEntry) -> str:
    ledger = entry.ledger
    if ledger is None:
        if entry.updates == 0:
            return "no update sent, so nothing to account"
        return "not reported (no DP ledger in its updates)"
    parts = [f"epsilon {float(ledger['epsilon']):.2f}" if ledger.get("epsilon") is not None
             else "epsilon unknown"]
    parts += [text.format(float(ledger[key])) for key, text in _LEDGER_FORMATS
              if ledger.get(key) is not None]
    if ledger.get("round") is not None:
        parts.append(f"as of round {ledger['round']}")
    return ", ".join(parts)


def budget_line(entry: ConsortiumEntry) -> str:
    """The site's own budget beside what it spent: "budget 8.00, spent 4.78", "no budget set,
    spent 4.78", "budget not reported, spent nothing"."""
    eps = None if entry.ledger is None else entry.ledger.get("epsilon")
    if eps is not None:
        spent = f"spent {float(eps):.2f}"
    else:
        spent = "spent nothing" if entry.updates == 0 else "spent not reported"
    if not entry.budget_stated:
        return f"budget not reported, {spent}"
    if entry.budget is None:
        return f"no budget set, {spent}"
    return f"budget {entry.budget:.2f}, {spent}"


def _declined_cell(entry: ConsortiumEntry) -> str:
    if not entry.declined:
        return ""
    total = sum(entry.declined.values())
    reasons = ", ".join(f"{reason} x{n}" for reason, n in sorted(entry.declined.items()))
    return (f"declined {total} task{'s' if total > 1 else ''} ({reasons}): the site's own "
            "decision; nothing of its data was used in those rounds")


def _status(entry: ConsortiumEntry, flags: list[str]) -> tuple[str, str]:
    """The status cell's CSS class and label."""
    if flags:
        return "flag", "FLAG"
    if entry.updates == 0 and entry.declined:
        return "info", "DECLINED"
    if entry.updates == 0:
        return "info", "NO UPDATES"
    return "pass", "OK"


#: What each state of an operator's audit request says in the report.
_REQUEST_STATES = {"waiting": "not yet delivered (the site has not been heard from since)",
                   "delivered": "delivered, not answered yet",
                   "answered": "answered: the shared result is above",
                   "declined": "declined by the site"}


def request_line(request: dict[str, Any]) -> str:
    """One sentence on an operator's audit request and where it stands."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(request.get("requested", 0))))
    line = (f"{request.get('audit')} audit requested {when}: "
            f"{_REQUEST_STATES.get(str(request.get('state')), str(request.get('state')))}")
    if request.get("state") == "declined":
        line += f" ({request.get('reason')}: {request.get('detail')})"
    return line


def dp_summary(result: dict[str, Any] | None) -> str:
    """A shared one-run DP audit's claim, bound and audited settings in one line ("" if none)."""
    if not isinstance(result, dict):
        return ""

    def num(key: str, form: str) -> str:
        value = result.get(key)
        return "none" if value is None else form.format(float(value))

    claimed, spent = result.get("claimed_epsilon"), result.get("accountant_epsilon")
    at = f"at delta {num('delta', '{:.2g}')}"
    if claimed is None:
        claim = "no DP claim (the audit run trained without DP-SGD)"
    elif claimed == spent:
        claim = f"the audit run's accountant: epsilon {num('claimed_epsilon', '{:.2f}')} {at}"
    else:
        claim = (f"claim checked: epsilon {num('claimed_epsilon', '{:.2f}')} {at} (the audit "
                 f"run's accountant: {num('accountant_epsilon', '{:.2f}')})")
    return (f"{claim}; proven at least {num('epsilon_lower_bound', '{:.2f}')}, these canaries "
            f"prove at most {num('max_provable', '{:.2f}')}; audited run: noise multiplier "
            f"{num('noise_multiplier', '{:.3g}')}, clip norm {num('max_grad_norm', '{:.3g}')}, "
            f"{num('epochs', '{:.0f}')} epochs, batch {num('batch_size', '{:.0f}')}, "
            f"{num('training_examples', '{:.0f}')} examples")


def _audit_cell(entry: ConsortiumEntry) -> str:
    if not entry.audits and not entry.audit_requests:
        return "<i>no audit shared</i>"
    out = []
    for kind, agg in sorted(entry.audits.items()):
        rows = "".join(
            f"<li><span class='{escape(v.get('status', 'info'))}x'>"
            f"{escape(str(v.get('status', '')).upper())}</span> {escape(v.get('title', ''))}: "
            f"{escape(v.get('value', ''))}</li>" for v in agg.get("verdicts", []))
        summary = dp_summary(agg.get("result"))
        out.append(f"<b>{escape(kind)}</b><ul>{rows}</ul>"
                   + (f"<div class='expl'>{escape(summary)}</div>" if summary else ""))
    if entry.audit_requests:
        rows = "".join(f"<li>{escape(request_line(r))}</li>" for r in entry.audit_requests)
        out.append(f"<b>requested by the operator</b><ul>{rows}</ul>")
    return "".join(out)


def render_consortium_report(entries: list[ConsortiumEntry], out_dir: Path | str, *,
                             scope: ReportScope | None = None) -> tuple[Path, Path]:
    """Write ``consortium_report.html`` and ``consortium_report.json`` into ``out_dir``."""
    flags = {e.participant: entry_flags(e) for e in entries}
    flagged = [p for p, f in flags.items() if f]
    declined = [e.participant for e in entries if e.updates == 0 and e.declined]
    if flagged:
        head = f"ATTENTION: {len(flagged)} of {len(entries)} participants have flags."
    else:
        head = f"No flags among {len(entries)} participants."
    detail = "Participants with flags are listed first, with the reasons."
    if declined:
        detail += (f" {len(declined)} declined every task given and sent no update: "
                   "the site's own decision, not a flag.")
    flag_list = "".join(f"<li><b>{escape(p)}</b>: {escape('; '.join(f))}</li>"
                        for p, f in flags.items() if f)
    ordered = sorted(entries, key=lambda e: not flags[e.participant])  # flagged first, stable
    rows = []
    for e in ordered:
        kind, label = _status(e, flags[e.participant])
        decl = _declined_cell(e)
        aside = "; ".join(f"round {r['round']}: " + ", ".join(r.get("reasons", []))
                          for r in e.set_aside)
        ledger = escape(_ledger_cell(e)) + "".join(
            f"<div class='expl'>{escape(text)}</div>"
            for text in (budget_line(e), decl, aside) if text)
        rows.append(f"<tr><td><b>{escape(e.participant)}</b></td>"
                    f"<td>{escape(e.aggregation_mode)}</td>"
                    f"<td>{'-' if e.updates is None else e.updates}</td><td>{ledger}</td>"
                    f"<td>{_audit_cell(e)}</td>"
                    f"<td class='status {kind}'>{label}</td></tr>")
    body = (
        "<h1>Consortium privacy report</h1>"
        + (f"<div class='sub'><b>{escape(scope.describe())}</b></div>" if scope else "")
        + "<div class='sub'>Per participant: the updates the coordinator accepted, the privacy "
          "budget spent (DP ledger), the tasks it declined, the updates the robustness defence "
          "set aside (per round, with rule, score and threshold), what the coordinator sees of "
          "its updates, the audit results it shared and the audits the operator asked it for."
          "</div>"
        + banner(bool(flagged), head, detail)
        + (f"<ul>{flag_list}</ul>" if flag_list else "")
        + "<table class='v'><tr><th>Participant</th><th>Aggregation</th><th>Updates</th>"
          "<th>DP ledger</th><th>Shared audit results</th><th>Status</th></tr>"
        + "".join(rows) + "</table>"
        + "<style>.flagx{color:#c0392b;font-weight:700}.passx{color:#1e8449;font-weight:700}"
          ".inconclusivex{color:#b9770e;font-weight:700}.infox{color:#555}td.status.info{background:#d6e4f0;color:#1a1a1a}</style>"
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out / "consortium_report.html", out / "consortium_report.json"
    report = {"kind": "consortium-report", "flagged": flagged, "declined": declined,
              "scope": None if scope is None else vars(scope),
              "participants": [{"participant": e.participant,
                                "aggregation_mode": e.aggregation_mode, "ledger": e.ledger,
                                "updates": e.updates, "declined": e.declined,
                                "audits": e.audits, "audit_requests": e.audit_requests,
                                "set_aside": e.set_aside, "flags": flags[e.participant],
                                "budget": e.budget, "budget_stated": e.budget_stated}
                               for e in entries]}
    write_atomic(html_path, page("Consortium privacy report", body).encode("utf-8"))
    write_atomic(json_path, (json.dumps(report, indent=2, sort_keys=True, default=str)
                             + "\n").encode())
    return html_path, json_path


__all__ = ["ConsortiumEntry", "ReportScope", "budget_line", "dp_summary", "entry_flags",
           "render_consortium_report", "request_line"]
