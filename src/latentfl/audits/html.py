"""Self-contained HTML pieces shared by every audit report: no external URL, images inline."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

import numpy as np

from latentfl.audits.verdict import Verdict, format_p

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:24px;
color:#1a1a1a;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#555;font-size:13px;margin-bottom:14px}
.banner{padding:14px 18px;border-radius:6px;font-size:16px;margin:10px 0 14px}
.banner b{font-size:19px}.banner.flag{background:#fdecea;border:2px solid #c0392b}
.banner.pass{background:#eaf7ee;border:2px solid #1e8449}
.banner.inconclusive{background:#fef5e7;border:2px solid #b9770e}
.warn{background:#fef5e7;border-left:4px solid #b9770e;padding:6px 10px;font-size:13px;margin:4px 0}
table.v{border-collapse:collapse;width:100%;font-size:13px}
table.v th{background:#f0f0f0;text-align:left;padding:6px 8px;border-bottom:2px solid #ccc}
table.v td{padding:6px 8px;border-bottom:1px solid #e3e3e3;vertical-align:top}
td.status{font-weight:700;text-align:center;white-space:nowrap;width:70px}
td.flag{background:#c0392b;color:#fff}td.pass{background:#1e8449;color:#fff}
td.info{background:#d6dbdf}td.inconclusive{background:#b9770e;color:#fff}
.expl{color:#555;font-size:12px;margin-top:3px}
.note{font-size:12px;color:#555}
table.grid td{text-align:center;font-size:11px;padding:4px 10px;color:#333}
table.grid img{width:96px;height:96px;image-rendering:pixelated;border:1px solid #999}
table.grid th{font-size:12px}
img.plot{max-width:100%;margin:6px 0}
.copy{color:#c0392b;font-weight:700}.okc{color:#1e8449}
"""


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_png(image_hwc: np.ndarray) -> bytes:
    """PNG bytes of one uint8 (H, W, C) image."""
    from PIL import Image

    arr = image_hwc[:, :, 0] if image_hwc.shape[2] == 1 else image_hwc
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def img_tag(png: bytes, alt: str, css_class: str = "") -> str:
    cls = f' class="{css_class}"' if css_class else ""
    return f'<img{cls} alt="{escape(alt)}" src="{png_data_uri(png)}">'


def banner(outcome: bool | str, headline: str, detail: str) -> str:
    """The coloured headline: ``outcome`` is flagged (bool) or ``flag``/``pass``/``inconclusive``."""
    kind = outcome if isinstance(outcome, str) else ("flag" if outcome else "pass")
    return f'<div class="banner {kind}"><b>{escape(headline)}</b><br>{escape(detail)}</div>'


def verdict_table(verdicts: Sequence[Verdict], baseline_label: str | None) -> str:
    with_p = any(v.p_value is not None for v in verdicts)
    head = ["Check", "Result", "Flag when", "Calibrated against"]
    if with_p:
        head.append("Chance of this on a clean set")
    if baseline_label:
        head.append(baseline_label)
    head.append("Verdict")
    rows = ["<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for v in verdicts:
        label = {"flag": "FLAG", "pass": "PASS", "info": "INFO",
                 "inconclusive": "INCONCLUSIVE"}[v.status]
        cells = [f"<b>{escape(v.title)}</b><div class='expl'>{escape(v.explanation)}</div>",
                 escape(v.value), escape(v.threshold), escape(v.calibration)]
        if with_p:
            cells.append(escape(format_p(v.p_value)))
        if baseline_label:
            cells.append(escape(v.baseline))
        row = "".join(f"<td>{c}</td>" for c in cells)
        rows.append(f"<tr>{row}<td class='status {v.status}'>{label}</td></tr>")
    return '<table class="v">' + "".join(rows) + "</table>"


def warnings_block(warnings: Sequence[str]) -> str:
    """Each sample-size or setup warning as one amber line (nothing when there are none)."""
    return "".join(f"<div class='warn'>&#9888; {escape(w)}</div>" for w in warnings)


def page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>\n")


__all__ = ["banner", "escape", "image_png", "img_tag", "page", "png_data_uri", "verdict_table",
           "warnings_block"]
