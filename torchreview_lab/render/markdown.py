"""The review in the Markdown format reviewers expect (DESIGN.md, "The review in Markdown")."""
from __future__ import annotations

from typing import Dict, List

from ..findings import SEVERITIES, SEVERITY_HEADINGS, Finding

# The next step a reviewer recommends when a category shows up, most valuable first.
RECOMMENDATIONS: Dict[str, str] = {
    "algorithm-correctness": "Fix the correctness issues first and add a test that compares against a slow reference implementation on small inputs, including edge sizes (T=1, K=1).",
    "memory-correctness": "Detach or `.item()` values kept across iterations, then confirm with `torchreview check` that live memory stays flat over repeated steps.",
    "memory-complexity": "Measure memory against T with `torchreview scale FILE.py:harness --target 400000` (or the panel's Scaling tab) and stream over the sequence instead of materializing O(T*K*C^2) tensors.",
    "scaling": "Probe the scaling at several sizes and compare the fitted exponent with the complexity you expect before running at the target length.",
    "device-handling": "Create tensors on the device of the inputs (`device=x.device`, `x.new_zeros`, `*_like`) and run one step on a GPU (or `torchreview check`, which simulates a non-CPU device) before scaling up.",
    "numerical-stability": "Work in log space (`logsumexp`, `log_softmax`), zero-centre before prefix sums, and compare against a float64 reference at the target length.",
    "gradient-flow": "Check that every parameter receives a finite, non-zero gradient after one backward pass (`torchreview check` does this) and remove silent stop-gradients.",
    "performance-patterns": "Remove host-device syncs and graph breaks from the hot path (`torch._dynamo.explain`), and batch per-sample Python loops.",
    "compute-complexity": "Replace Python loops over long dimensions with batched tensor operations.",
    "error-handling": "Let unexpected errors propagate (or re-raise with context) instead of returning None; validate inputs with exceptions, not asserts.",
    "robustness": "Validate shapes, lengths and dtypes at public entry points and raise clear errors.",
    "observability": "Use `logging` (or a metrics logger) instead of `print` in library code.",
    "api-design": "Keep public signatures explicit: no mutable defaults, typed parameters, documented shapes.",
    "documentation": "Document every public function with its tensor shapes and units.",
    "type-safety": "Add type hints to public functions (`Tensor` for tensors) and run a type checker in CI.",
    "readability": "Name magic numbers and keep functions small.",
    "testing": "Add tests (or an assert cell) that check each function's outputs and gradients on small inputs.",
}


def _fix_block(f: Finding) -> List[str]:
    if f.fix is None:
        return []
    return ["**Fix**:", "```python", "# Before", f.fix.before.rstrip(), "# After", f.fix.after.rstrip(), "```"]


def _location(f: Finding) -> str:
    if f.cell is None:
        return f"`{f.path}:{f.line}`"
    count = f" [In {f.execution_count}]" if f.execution_count is not None else ""
    return f"`{f.path}` cell {f.cell + 1}{count}, line {f.line}"


def _purpose(review) -> str:
    """One phrase on what the code is, from a notebook's first heading or a module docstring."""
    for doc in review.documents:
        for cell in doc.cells:
            if cell.cell_type == "markdown":
                for ln in cell.source.splitlines():
                    if ln.lstrip().startswith("#"):
                        return ln.lstrip("# ").strip()
            if cell.cell_type == "code":
                import ast

                try:
                    d = ast.get_docstring(ast.parse(cell.code))
                except SyntaxError:
                    d = None
                if d:
                    return d.strip().splitlines()[0].rstrip(".")
                break
    return ""


def _summary(review) -> str:
    files = ", ".join(f"`{d.path}`" for d in review.documents) or "the input"
    purpose = _purpose(review)
    intro = f"Review of {files}" + (f" ({purpose})" if purpose else "") + f" under the {review.standard} standard."
    n = {s: sum(1 for f in review.findings if f.severity == s) for s in SEVERITIES}
    if not review.findings:
        return intro + " No issues found: the code follows the checklist for this standard."
    counts = ", ".join(f"{n[s]} {s}" for s in SEVERITIES if n[s])
    worst = review.findings[0]
    verdict = {
        "critical": "It is not safe to use as is",
        "high": "It needs changes before it runs at scale",
        "medium": "It works but has maintainability and minor performance issues",
        "low": "It is in good shape, with style-level suggestions",
    }[worst.severity]
    return f"{intro} {verdict}: {counts}; the most serious is \"{worst.title}\" at {_location(worst)}."


def render_markdown(review, **_) -> str:
    out: List[str] = ["## Summary", _summary(review), ""]
    for sev in SEVERITIES:
        items = [f for f in review.findings if f.severity == sev]
        out.append(f"## {SEVERITY_HEADINGS[sev]}")
        if not items:
            out += ["None.", ""]
            continue
        if sev == "low":
            for f in items:
                out.append(f"- **{f.title}** ({f.rule}, {f.category}) at {_location(f)}: {f.problem}")
            out.append("")
            continue
        for f in items:
            out.append(f"### {f.title} ({f.rule})")
            out.append(f"**Location**: {_location(f)}")
            out.append(f"**Problem**: {f.problem}")
            if sev != "medium" or f.impact:
                out.append(f"**Impact**: {f.impact}")
            shown = {k: v for k, v in (f.evidence or {}).items() if k != "function"}
            if shown and sev != "medium":
                out.append("**Evidence**: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
            out += _fix_block(f)
            out.append("")
    out.append("## Positive Observations")
    out += [f"- {o}" for o in review.observations] or ["- None recognised by the engine."]
    out.append("")
    out.append("## Recommendations")
    seen = []
    for f in review.findings:  # already sorted most severe first
        if f.category in RECOMMENDATIONS and f.category not in seen:
            seen.append(f.category)
    if seen:
        out += [f"{i}. {RECOMMENDATIONS[c]}" for i, c in enumerate(seen, 1)]
    else:
        out.append("1. Keep the review in CI (`torchreview review --fail-on high`) so regressions are caught.")
    return "\n".join(out).rstrip() + "\n"
