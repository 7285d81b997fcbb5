"""Small HTML pieces for the notebook reprs of ``CheckResult`` and ``CompareResult``.

Theme-neutral: no background colours; text inherits the frontend's colour; severities and pass/fail
are shown by a coloured left border and coloured text in mid-tone colours that read on light and dark
backgrounds; rules between rows are translucent grey. Every piece of text goes through
``html.escape`` (messages carry user strings: exception texts, file names, reprs).
"""
from __future__ import annotations

import html
import math
from typing import Any, Iterable, Optional

SEVERITY_COLORS = {"critical": "#e53935", "high": "#f57c00", "medium": "#c79100", "low": "#78909c"}
PASS_COLOR, FAIL_COLOR = "#43a047", "#e53935"

_CELL = "text-align:left;vertical-align:top;padding:3px 8px;border-bottom:1px solid rgba(128,128,128,0.25)"
_HEAD = "text-align:left;vertical-align:bottom;padding:3px 8px;font-weight:600;border-bottom:1px solid rgba(128,128,128,0.5)"
MUTED = "opacity:0.75;font-size:0.9em"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def th(text: str) -> str:
    return f"<th style='{_HEAD}'>{esc(text)}</th>"


def td(inner_html: str, style: str = "") -> str:
    """A cell; ``inner_html`` must already be escaped."""
    return f"<td style='{_CELL};{style}'>{inner_html}</td>"


def marked(text: str, color: str) -> str:
    """A cell marked by a coloured left border and coloured bold text (severity, pass/fail)."""
    return td(esc(text), f"border-left:4px solid {color};color:{color};font-weight:600;white-space:nowrap")


def table(headers: Iterable[str], rows: Iterable[str]) -> str:
    return ("<table><thead><tr>" + "".join(th(h) for h in headers) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def num(x: Optional[float]) -> str:
    if x is None:
        return "–"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf"
    if x == 0:
        return "0"
    return f"{x:.3g}"


def _short(v: Any, width: int = 60) -> str:
    if isinstance(v, bool) or v is None:
        s = str(v)
    elif isinstance(v, int):
        s = f"{v:,}"
    elif isinstance(v, float):
        s = num(v)
    elif isinstance(v, str):
        s = v
    elif isinstance(v, (list, tuple)):
        items = [_short(x, 30) for x in list(v)[:3]]
        s = "[" + ", ".join(items) + (f", … {len(v)} in all" if len(v) > 3 else "") + "]"
    elif isinstance(v, dict):
        keys = list(v)[:4]
        s = "{" + ", ".join(f"{k}: {_short(v[k], 20)}" for k in keys) + (", …" if len(v) > 4 else "") + "}"
    else:
        s = repr(v)
    return s if len(s) <= width else s[: width - 1] + "…"


def evidence_summary(evidence: Optional[dict], width: int = 180) -> str:
    """``key: value; key: value`` with long values shortened; plain text (escape it)."""
    if not evidence:
        return ""
    s = "; ".join(f"{k}: {_short(v)}" for k, v in evidence.items())
    return s if len(s) <= width else s[: width - 1] + "…"


def box(inner_html: str) -> str:
    return f"<div style='font-size:13px;line-height:1.4'>{inner_html}</div>"
