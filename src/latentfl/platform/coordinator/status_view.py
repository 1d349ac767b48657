"""Status for people: readable lines, and a self-contained HTML page with an accuracy plot.

Both render the dict :func:`~latentfl.platform.coordinator.status.collect_status` returns, so
the text, ``--json`` and ``--html`` outputs never disagree.
"""

from __future__ import annotations

import time
from typing import Any

from latentfl.audits.html import escape, page
from latentfl.platform.coordinator.status import set_aside_reason

_STATE_LABEL = {"never-seen": "never seen", "not-enrolled": "not enrolled"}


def _ago(t: float | None, now: float) -> str:
    if not t:
        return "never"
    seconds = max(0.0, now - t)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _reasons(counts: dict[str, int], verb: str) -> str:
    return ", ".join(f"{verb} {n}x {reason}" for reason, n in sorted(counts.items()))


def _coordinator_line(status: dict[str, Any]) -> str:
    c = status["coordinator"]
    daemon = f"running (pid {c['pid']}) on {c['endpoint']}" if c["running"] else "not running"
    return f"coordinator {daemon}"


def _accuracy(metrics: dict[str, Any]) -> str:
    acc = metrics.get("accuracy")
    return "-" if acc is None else f"{100 * float(acc):.1f}%"


def _outcome(round: dict[str, Any]) -> str:
    """A closed round's accuracy, or that it was aborted (nothing aggregated)."""
    return "aborted: nothing aggregated" if round.get("aborted") else _accuracy(round["metrics"])


def phase_label(status: dict[str, Any]) -> str:
    """The session's phase as people read it: a pause and a stall say so, and why."""
    if status["phase"] == "stalled":
        return f"stalled: {status['stalled']}"
    if status["phase"] == "paused":
        return "paused (by an operator: no round opens or closes until `latentfl admin resume`)"
    return status["phase"]


def render_text(status: dict[str, Any], *, now: float | None = None) -> list[str]:
    """Readable lines for a status dict: coordinator, participants, rounds, journal."""
    now = time.time() if now is None else now
    lines = [f"session {status['session']}   {_coordinator_line(status)}",
             f"phase   {phase_label(status)}   rounds done {status['rounds_done']} of "
             f"{status['rounds']}"]
    current = status["round_in_progress"]
    if current:
        lines.append(f"round   {current['round']} {current['phase']}: "
                     f"{len(current['received'])} of {len(current['planned'])} updates in"
                     + (f"; waiting for {status['min_participants']} participants online"
                        if status["phase"] == "waiting" else ""))
    lines += ["", f"{'participant':<20} {'state':<12} {'last seen':<12} {'accepted':>8} "
                  f"{'refused':>8} {'declined':>8} {'set aside':>9}  reasons"]
    for pid, p in status["participants"].items():
        reasons = "; ".join(r for r in (_reasons(p["refused_reasons"], "refused"),
                                        _reasons(p["declined_reasons"], "declined")) if r)
        lines.append(f"{pid:<20} {_STATE_LABEL.get(p['state'], p['state']):<12} "
                     f"{_ago(p['last_seen'], now):<12} {p['accepted']:>8} {p['refused']:>8} "
                     f"{p['declined']:>8} {p.get('set_aside', 0):>9}  {reasons}".rstrip())
    refused = status["refused_connections"]
    if refused["attempts"]:
        keys = ", ".join(f"{k['fingerprint']}"
                         + (f" (revoked {k['participant']})" if k["participant"] else "")
                         + f" x{k['attempts']}" for k in refused["keys"][:5])
        more = f" and {len(refused['keys']) - 5} more" if len(refused["keys"]) > 5 else ""
        lines += ["", f"refused connections: {refused['attempts']} handshakes from "
                      f"{len(refused['keys'])} keys not enrolled or revoked: {keys}{more}"]
    if status["history"]:
        lines += ["", f"{'round':>5} {'accepted':>9} {'refused':>8} {'declined':>8} "
                      f"{'seconds':>8} {'accuracy':>9}"]
        for r in status["history"]:
            outcome = _outcome(r)
            lines.append(f"{r['round']:>5} {r['accepted']:>4} of {r['planned']:<2} "
                         f"{r['refused']:>8} {r['declined']:>8} {r['seconds'] or 0:>8.1f} "
                         f"{outcome:>9}")
        aside = _set_aside_lines(status["history"])
        if aside:
            lines += ["", "updates set aside (accepted, then left out or bounded by the defence):",
                      *aside]
    journal = status["journal"]
    if journal["error"]:
        lines += ["", f"journal {journal['path']}: DAMAGED: {journal['error']}"]
    elif journal["verified"]:
        lines += ["", f"journal {journal['path']}: {journal['entries']} entries, hash chain "
                      "verified"]
    return lines


def _set_aside_lines(history: list[dict[str, Any]]) -> list[str]:
    return [f"  round {r['round']}: {e['participant']} {set_aside_reason(e)}"
            for r in history for e in r.get("set_aside", [])]


def accuracy_svg(history: list[dict[str, Any]], *, width: int = 560, height: int = 240) -> str:
    """An inline SVG line plot of test accuracy per round (empty text without any)."""
    points = [(r["round"], 100 * float(r["metrics"]["accuracy"])) for r in history
              if r["metrics"].get("accuracy") is not None]
    if not points:
        return "<p class='note'>No round has a test accuracy yet (set test_data).</p>"
    left, right, top, bottom = 48, 16, 16, 36
    last = max(1, max(r for r, _ in points))
    top_acc = min(100.0, max(10.0, 10 * (max(a for _, a in points) // 10 + 1)))

    def xy(r: float, a: float) -> tuple[float, float]:
        share = 0.5 if last == 1 else (r - 1) / (last - 1)
        x = left + share * (width - left - right)
        return x, top + (1 - a / top_acc) * (height - top - bottom)

    grid = []
    for tick in range(0, int(top_acc) + 1, 10 if top_acc <= 50 else 20):
        _, y = xy(1, tick)
        grid.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' "
                    f"stroke='#ddd'/><text x='{left - 6}' y='{y + 4:.1f}' "
                    f"text-anchor='end'>{tick}%</text>")
    step = max(1, last // 10)
    for r in range(1, last + 1, step):
        x, _ = xy(r, 0)
        grid.append(f"<text x='{x:.1f}' y='{height - bottom + 16}' "
                    f"text-anchor='middle'>{r}</text>")
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(r, a) for r, a in points))
    middle = (height - bottom) / 2
    dots = "".join(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3.5' fill='#1f6fb2'>"
                   f"<title>round {r}: {a:.1f}%</title></circle>"
                   for (r, a), (x, y) in ((p, xy(*p)) for p in points))
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            "font-size='11' font-family='sans-serif' role='img' "
            "aria-label='test accuracy per round'>" + "".join(grid)
            + f"<polyline points='{path}' fill='none' stroke='#1f6fb2' stroke-width='2'/>"
            + dots + f"<text x='{(width + left) / 2}' y='{height - 4}' "
            f"text-anchor='middle'>round</text><text x='12' y='{middle}' "
            f"transform='rotate(-90 12 {middle})' text-anchor='middle'>test accuracy</text>"
            "</svg>")


def _cell(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "<td class='na'>-</td>"
    marks = ["accepted"] * cell["accepted"] + ["refused"] * cell["refused"] + \
        ["declined"] * cell["declined"] + ["set aside"] * cell.get("set_aside", 0)
    title = escape("; ".join(cell["reasons"]) or "update accepted")
    text = " ".join(m[0].upper() for m in marks)
    kind = "dec" if cell["declined"] else ("ref" if cell["refused"] else
                                          "asd" if cell.get("set_aside") else "acc")
    return f"<td class='{kind}' title='{title}'>{escape(text)}</td>"


def _set_aside_html(history: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{r['round']}</td><td><b>{escape(e['participant'])}</b></td>"
        f"<td>{escape(str(e['rule']))}</td><td>{escape(str(e['action']))}</td>"
        f"<td>{float(e['score']):.4g}</td><td>{float(e['threshold']):.4g}</td></tr>"
        for r in history for e in r.get("set_aside", []))
    if not rows:
        return ""
    return ("<h2>Updates set aside</h2><p class='note'>Accepted updates the robust rule or "
            "FedDGM's upload screening left out (excluded), scaled down (clipped) or bounded "
            "(outlier), with the score that crossed the threshold.</p><table class='v'><tr>"
            "<th>Round</th><th>Participant</th><th>Rule</th><th>Action</th><th>Score</th>"
            "<th>Threshold</th></tr>" + rows + "</table>")


def render_html(status: dict[str, Any], *, now: float | None = None) -> str:
    """A self-contained page: coordinator, participants, per-round table and accuracy plot."""
    now = time.time() if now is None else now
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(status["generated"]))
    head = ("<h1>Consortium status: " + escape(status["session"]) + "</h1>"
            f"<div class='sub'>{escape(_coordinator_line(status))}; phase "
            f"<b>{escape(phase_label(status))}</b>; {status['rounds_done']} of {status['rounds']} "
            f"rounds done; generated {escape(when)}</div>")
    people = "".join(
        f"<tr><td><b>{escape(pid)}</b></td><td class='st {escape(p['state'])}'>"
        f"{escape(_STATE_LABEL.get(p['state'], p['state']))}</td>"
        f"<td>{escape(_ago(p['last_seen'], now))}</td><td>{p['accepted']}</td>"
        f"<td>{p['refused']}</td><td>{p['declined']}</td><td>{p.get('set_aside', 0)}</td><td>"
        + escape("; ".join(r for r in (_reasons(p["refused_reasons"], "refused"),
                                       _reasons(p["declined_reasons"], "declined")) if r))
        + "</td></tr>" for pid, p in status["participants"].items())
    rounds = [r["round"] for r in status["history"]]
    matrix = "".join(
        f"<tr><td><b>{escape(pid)}</b></td>"
        + "".join(_cell(next((c for c in p["rounds"] if c["round"] == r), None))
                  for r in rounds) + "</tr>"
        for pid, p in status["participants"].items())
    history = "".join(
        f"<tr><td>{r['round']}</td><td>{r['accepted']} of {r['planned']}</td>"
        f"<td>{r['refused']}</td><td>{r['declined']}</td><td>{r['seconds'] or 0:.1f}</td>"
        f"<td>{escape(_outcome(r))}</td><td>"
        + ("-" if r["metrics"].get("loss") is None else f"{float(r['metrics']['loss']):.3f}")
        + "</td></tr>" for r in status["history"])
    refused = status["refused_connections"]
    journal = status["journal"]
    body = (
        head
        + "<h2>Participants</h2><table class='v'><tr><th>Participant</th><th>State</th>"
          "<th>Last seen</th><th>Accepted</th><th>Refused</th><th>Declined</th>"
          "<th>Set aside</th><th>Reasons</th></tr>" + people + "</table>"
        + f"<p class='note'>Refused connection attempts (keys not enrolled or revoked): "
          f"{refused['attempts']} from {len(refused['keys'])} keys.</p>"
        + "<h2>Test accuracy per round</h2>" + accuracy_svg(status["history"])
        + "<h2>Rounds</h2><table class='v'><tr><th>Round</th><th>Updates accepted</th>"
          "<th>Refused</th><th>Declined</th><th>Seconds</th><th>Accuracy</th><th>Loss</th>"
          "</tr>" + history + "</table>"
        + ("<h2>Per participant and round</h2><p class='note'>A accepted, R refused, "
           "D declined, S set aside by the defence; hover a cell for the reasons.</p><table class='v m'><tr><th></th>"
           + "".join(f"<th>{r}</th>" for r in rounds) + "</tr>" + matrix + "</table>"
           if rounds else "")
        + _set_aside_html(status["history"])
        + f"<p class='note'>Journal {escape(journal['path'])}: {journal['entries']} entries, "
        + (f"<b class='bad'>DAMAGED: {escape(journal['error'])}</b>" if journal["error"]
           else "hash chain verified" if journal["verified"] else "not present") + ".</p>"
        + "<style>td.st.online{color:#1e8449;font-weight:700}td.st.revoked,b.bad{color:#c0392b}"
          "td.st.offline,td.st.never-seen{color:#777}table.m td{text-align:center}"
          "td.acc{background:#eaf7ee}td.ref{background:#fdecea}td.dec{background:#fff4d6}"
          "td.asd{background:#f3e5f5}"
          "td.na{color:#bbb}table.m{width:auto}table.m td,table.m th{min-width:28px}</style>"
    )
    return page(f"latentfl status: {status['session']}", body)


__all__ = ["accuracy_svg", "render_html", "render_text"]
