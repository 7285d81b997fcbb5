from __future__ import annotations

import os
import sys

from ..findings import SEVERITIES

_COLOURS = {"critical": "\033[1;31m", "high": "\033[31m", "medium": "\033[33m", "low": "\033[36m"}
_RESET = "\033[0m"


def _use_colour(colour) -> bool:
    if colour is not None:
        return bool(colour)
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def render_text(review, colour=None, verbose: bool = True, **_) -> str:
    """Terminal format: one header line per finding (``path:line:col`` or ``path cell N, line L``),
    then the problem and the fix indented; a summary line at the end."""
    c = _use_colour(colour)
    lines = []
    for f in review.findings:
        sev = f"[{f.severity}]"
        if c:
            sev = f"{_COLOURS[f.severity]}{sev}{_RESET}"
        where = f"{f.path}:{f.line}:{f.column}" if f.cell is None else f"{f.location()}, col {f.column}"
        lines.append(f"{where}: {f.rule} {sev} {f.title}")
        if verbose:
            lines.append(f"    {f.problem}")
            if f.impact:
                lines.append(f"    impact: {f.impact}")
            if f.fix is not None:
                after = f.fix.after.replace("\n", "\n          ")
                lines.append(f"    fix:    {after}")
    for e in review.errors:
        lines.append(f"warning: {e}")
    s = review.to_json()["summary"]
    counts = ", ".join(f"{s['by_severity'][k]} {k}" for k in SEVERITIES)
    lines.append(f"{s['total']} finding{'s' if s['total'] != 1 else ''} ({counts}) in {s['files']} "
                 f"file{'s' if s['files'] != 1 else ''}, {review.standard} standard")
    return "\n".join(lines)
