"""The runtime rule codes (TR010-TR029): one code per dynamic check, and helpers to build Findings.

Codes, categories and default severities live here as data; ``docs/measure.md`` documents each.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional

from ..findings import Finding, Fix
from ._frames import Site, def_site, source_line

if TYPE_CHECKING:
    from .result import ScalingResult


@dataclass(frozen=True)
class RuntimeRule:
    code: str
    name: str
    category: str
    severity: str
    summary: str


RULES: Dict[str, RuntimeRule] = {r.code: r for r in (
    RuntimeRule("TR010", "device-mismatch", "device-handling", "critical",
                "a tensor is created on the CPU (factory without device=) or an op mixes devices "
                "while the inputs live on another device"),
    RuntimeRule("TR011", "host-device-sync", "performance-patterns", "medium",
                "a call forces the host to wait for the device (.item(), bool(t), nonzero, boolean "
                "masks, .tolist(), .numpy(), .cpu())"),
    RuntimeRule("TR012", "broken-gradient-flow", "gradient-flow", "critical",
                "the loss has no grad_fn although inputs require grad, or parameters get None, "
                "all-zero or non-finite gradients"),
    RuntimeRule("TR013", "non-finite-values", "numerical-stability", "critical",
                "an op produces NaN or Inf from finite inputs"),
    RuntimeRule("TR014", "graph-break", "performance-patterns", "medium",
                "torch.compile (dynamo) breaks the graph"),
    RuntimeRule("TR015", "memory-leak", "memory-correctness", "high",
                "live tensor memory grows with every call"),
    RuntimeRule("TR016", "gradcheck-failed", "algorithm-correctness", "critical",
                "a custom torch.autograd.Function's backward disagrees with finite differences"),
    RuntimeRule("TR017", "implementations-disagree", "algorithm-correctness", "critical",
                "two implementations give different outputs or gradients"),
    RuntimeRule("TR020", "memory-does-not-fit", "memory-complexity", "critical",
                "the measured memory law predicts more memory at the target size than the device has"),
    RuntimeRule("TR021", "out-of-memory-in-probe", "scaling", "high",
                "the probe ran out of memory at a measured size"),
)}


def make_finding(code: str, title: str, site: Optional[Site], *, problem: str, impact: str = "",
                 fix: Optional[Fix] = None, evidence: Optional[Dict[str, Any]] = None,
                 severity: Optional[str] = None) -> Finding:
    rule = RULES[code]
    path, line = (site[0], site[1]) if site else ("<unknown>", 1)
    ev = dict(evidence or {})
    if site:
        code_line = source_line(site[0], site[1])
        if code_line:
            ev.setdefault("source", code_line)
    return Finding(rule=code, category=rule.category, severity=severity or rule.severity, title=title,
                   path=path, line=max(int(line), 1), problem=problem, impact=impact, fix=fix,
                   evidence=ev or None)


def scaling_findings(result: "ScalingResult") -> list:
    from ._format import fmt_bytes, fmt_size

    site = None
    if result.location:
        site = (result.location["path"], result.location["line"], result.function)
    out = []
    t = result.target
    if t is not None and t.fits is False:
        mf = result.memory_fit
        out.append(make_finding(
            "TR020", f"Memory at T={t.size:,} does not fit on {result.device}", site,
            problem=result.verdict(),
            impact=f"the run at T={t.size:,} needs about {fmt_bytes(t.predicted_bytes)} and will fail "
                   f"with out-of-memory" + (f"; T up to ≈ {fmt_size(t.max_size_that_fits)} fits"
                                           if t.max_size_that_fits is not None else ""),
            evidence={"exponent": mf.exponent if mf else None, "r2": mf.r2 if mf else None,
                      "predicted_bytes": t.predicted_bytes, "meta_peak_bytes": t.meta_peak_bytes,
                      "meta_from_sizes": list(t.meta_from_sizes),
                      "device_bytes": t.device_bytes, "max_size_that_fits": t.max_size_that_fits,
                      "sizes": [p.size for p in result.points],
                      "peak_bytes": [p.peak_bytes for p in result.points]},
        ))
    for s in result.skipped:
        if s.get("kind") == "oom":
            out.append(make_finding(
                "TR021", f"Out of memory at T={s['size']:,}", site, problem=s["reason"],
                impact="the computation cannot run at this size on this device",
                evidence={"size": s["size"]}))
    return out


def harness_location(fn) -> Optional[Dict[str, Any]]:
    site = def_site(fn)
    return {"path": site[0], "line": site[1]} if site else None
