"""Rule documentation rendered from the rule classes (``torchreview explain``, docs/rules.md)."""
from __future__ import annotations

import inspect
from typing import List

from .findings import STANDARDS
from .rules import FAMILIES, all_rules


def rule_markdown(rule, heading: str = "##") -> str:
    doc = inspect.cleandoc(rule.__doc__ or "")
    summary, _, body = doc.partition("\n")
    sev = ", ".join(f"{s}: {rule.severity_for(s) or 'off'}" for s in STANDARDS)
    out: List[str] = [f"{heading} {rule.code}: {rule.title}", "",
                      f"*{summary.strip()}*", "",
                      f"- **Category**: `{rule.category}`",
                      f"- **Severity**: {sev}",
                      f"- **Autofix**: {'yes' if rule.autofix else 'no'}",
                      f"- **Suppress**: `# torchreview: ignore[{rule.code}]`", ""]
    section = None
    for line in body.strip("\n").splitlines():
        stripped = line.strip()
        if stripped.endswith(":") and stripped[:-1] in ("What it does", "Why is this bad", "Example", "Use instead"):
            if section in ("Example", "Use instead"):
                out.append("```")
            section = stripped[:-1]
            out += [f"**{section}**", ""]
            if section in ("Example", "Use instead"):
                out.append("```python")
            continue
        text = line[4:] if line.startswith("    ") else line.strip()
        out.append(text)
    if section in ("Example", "Use instead"):
        out.append("```")
    while out and out[-1] == "":
        out.pop()
    return "\n".join(_tidy(out)) + "\n"


def _tidy(lines: List[str]) -> List[str]:
    """Drop blank lines just inside code fences."""
    out: List[str] = []
    for ln in lines:
        if ln == "```" and out and out[-1] == "":
            out.pop()
        if out and out[-1] == "```python" and ln == "":
            continue
        out.append(ln)
    return out


def rules_reference() -> str:
    """docs/rules.md: generated; a test checks the committed file is current."""
    rules = all_rules()
    out = ["# Rule reference", "",
           "Generated from the rule classes by `python -m torchreview_lab.docs > docs/rules.md`; do not edit by hand.",
           "", f"{len(rules)} rules. Codes group by family (hundreds digit), so `--select TR2` picks a family.", "",
           "| code | title | category | research | production | autofix |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rules:
        out.append(f"| [{r.code}](#{r.code.lower()}) | {r.title} | `{r.category}` | {r.severity_for('research') or '-'} | "
                   f"{r.severity_for('production') or '-'} | {'yes' if r.autofix else ''} |")
    out.append("")
    current = None
    for r in rules:
        fam = r.code[:3]
        if fam != current:
            current = fam
            out += [f"## {fam}xx: {FAMILIES.get(fam, '')}", ""]
        out.append(rule_markdown(r, heading="###"))
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(rules_reference())
