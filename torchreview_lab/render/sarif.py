"""SARIF 2.1.0 for code-scanning tools (GitHub, GitLab, IDEs)."""
from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..rules import all_rules

_LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note"}


def render_sarif(review, **_) -> str:
    rules = {r.code: r for r in all_rules()}
    used = sorted({f.rule for f in review.findings})
    index = {code: i for i, code in enumerate(used)}
    driver_rules = []
    for code in used:
        r = rules.get(code)
        doc = (r.__doc__ or "").strip() if r else ""
        driver_rules.append({
            "id": code,
            "name": type(r).__name__ if r is None else r.__name__,
            "shortDescription": {"text": r.title if r else code},
            "fullDescription": {"text": doc.split("\n", 1)[0] if doc else code},
            "help": {"text": doc or code},
            "defaultConfiguration": {"level": _LEVEL[(r.severity_for(review.standard) if r else None) or "medium"]},
            "properties": {"category": r.category if r else "", "tags": [r.category] if r else []},
        })
    results = []
    for f in review.findings:
        region = {"startLine": f.line, "startColumn": f.column}
        if f.end_line:
            region["endLine"] = f.end_line
        if f.end_column:
            region["endColumn"] = f.end_column
        loc = {"physicalLocation": {"artifactLocation": {"uri": Path(f.path).as_posix()}, "region": region}}
        if f.cell is not None:
            loc["logicalLocations"] = [{"name": f"cell {f.cell + 1}", "kind": "module"}]
        text = f.problem + (f" Impact: {f.impact}" if f.impact else "")
        res = {
            "ruleId": f.rule,
            "ruleIndex": index[f.rule],
            "level": _LEVEL[f.severity],
            "message": {"text": text},
            "locations": [loc],
            "properties": {"severity": f.severity, "category": f.category, "cell": f.cell, "cell_id": f.cell_id},
        }
        if f.fix is not None:
            res["properties"]["fix"] = {"before": f.fix.before, "after": f.fix.after}
        results.append(res)
    sarif = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "torchreview", "version": __version__, "rules": driver_rules}},
            "results": results,
            "properties": {"standard": review.standard},
        }],
    }
    return json.dumps(sarif, indent=2)
