"""``ScalingResult``: the plain data a scaling probe returns, and its renderers.

Every renderer reads the same data: ``to_json`` (stable keys, used by the server and tests),
``__str__`` (a text table, the fits and a one-sentence verdict), ``plot()`` (a plotly Figure) and
``_repr_mimebundle_`` (the figure in a notebook, the text elsewhere).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from ._format import fmt_bytes, fmt_seconds, fmt_size
from .fit import R2_POOR, PowerLawFit


def _clamped(f: PowerLawFit) -> str:
    """`` (fitted -0.12, taken as O(1))`` for a fit whose negative exponent was clamped (``fit.py``)."""
    if f.raw_exponent is None or f.raw_exponent > -0.005:  # -0.00 would read as noise
        return ""
    return f" (fitted {f.raw_exponent:.2f}, taken as O(1))"


@dataclass
class Point:
    size: int
    peak_bytes: int
    seconds: float


@dataclass
class TargetPrediction:
    size: int
    peak_bytes: Optional[float] = None         # from the memory fit
    seconds: Optional[float] = None            # from the time fit
    meta_peak_bytes: Optional[int] = None      # from a meta-device run at the target
    device_bytes: Optional[int] = None         # CUDA: total memory; CPU: available RAM
    fits: Optional[bool] = None                # prediction <= free device memory
    max_size_that_fits: Optional[int] = None   # largest T the memory fit allows in free memory
    device_free_bytes: Optional[int] = None    # CUDA: free now (mem_get_info); CPU: available RAM
    meta_assumptions: List[str] = field(default_factory=list)
    meta_skipped_reason: Optional[str] = None
    # empty: meta_peak_bytes is an exact meta run at the target; else the sizes of the exact meta runs
    # it was extrapolated from (a harness whose run at the target would not finish in the time limit)
    meta_from_sizes: List[int] = field(default_factory=list)

    @property
    def predicted_bytes(self) -> Optional[float]:
        """The figure ``fits`` is judged on: the larger of the fit and the meta run."""
        vals = [v for v in (self.peak_bytes, self.meta_peak_bytes) if v is not None]
        return max(vals) if vals else None


@dataclass
class ScalingResult:
    function: str
    device: str
    points: List[Point] = field(default_factory=list)
    memory_fit: Optional[PowerLawFit] = None
    time_fit: Optional[PowerLawFit] = None
    target: Optional[TargetPrediction] = None
    skipped: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    budget_bytes: Optional[int] = None
    location: Optional[Dict[str, Any]] = None  # {"path", "line"} of the harness

    # ------------------------------------------------------------------ data
    def to_json(self) -> Dict[str, Any]:
        return {
            "function": self.function,
            "device": self.device,
            "points": [asdict(p) for p in self.points],
            "memory_fit": self.memory_fit.to_json() if self.memory_fit else None,
            "time_fit": self.time_fit.to_json() if self.time_fit else None,
            "target": asdict(self.target) if self.target else None,
            "skipped": [dict(s) for s in self.skipped],
            "warnings": list(self.warnings),
            "budget_bytes": self.budget_bytes,
            "location": dict(self.location) if self.location else None,
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "ScalingResult":
        if isinstance(data, str):
            data = json.loads(data)
        tgt = data.get("target")
        return cls(
            function=data["function"],
            device=data["device"],
            points=[Point(**p) for p in data.get("points", [])],
            memory_fit=PowerLawFit.from_json(data.get("memory_fit")),
            time_fit=PowerLawFit.from_json(data.get("time_fit")),
            target=TargetPrediction(**tgt) if tgt else None,
            skipped=[dict(s) for s in data.get("skipped", [])],
            warnings=list(data.get("warnings", [])),
            budget_bytes=data.get("budget_bytes"),
            location=data.get("location"),
        )

    def dumps(self, **kw) -> str:
        return json.dumps(self.to_json(), **kw)

    # ------------------------------------------------------------------ text
    def verdict(self) -> str:
        """One sentence: the memory law, the prediction at the target and whether it fits."""
        mf, tgt = self.memory_fit, self.target
        if mf is None and (tgt is None or tgt.meta_peak_bytes is None):
            n = len(self.points)
            return f"Not enough measurements to fit memory against T ({n} point{'s' if n != 1 else ''})."
        law = f"{mf.big_o()} memory" if mf else "memory (meta run only)"
        rough = ""
        if mf is not None and mf.r2 < R2_POOR:
            rough = f" (not a clean power law: R² {mf.r2:.2f}; treat as rough)"
        if tgt is None:
            return f"{law}{rough}."
        pred = tgt.predicted_bytes
        limit = tgt.device_free_bytes if tgt.device_free_bytes is not None else tgt.device_bytes
        s = f"{law}: {fmt_bytes(pred)} at T={tgt.size:,}"
        if limit is None or tgt.fits is None:
            s += " (device memory unknown)"
        else:
            where = fmt_bytes(tgt.device_bytes)
            if tgt.device_free_bytes is not None and tgt.device_bytes is not None \
                    and tgt.device_free_bytes < 0.95 * tgt.device_bytes:
                where += f" ({fmt_bytes(tgt.device_free_bytes)} free)"
            s += f" — {'fits' if tgt.fits else 'does not fit'} in {where}"
            if tgt.max_size_that_fits is not None and not tgt.fits:
                s += f"; largest T that fits ≈ {fmt_size(tgt.max_size_that_fits)}"
        return s + rough

    def table(self) -> str:
        rows = [f"{'T':>10}  {'peak memory':>12}  {'time':>10}"]
        for p in self.points:
            rows.append(f"{p.size:>10,}  {fmt_bytes(p.peak_bytes):>12}  {fmt_seconds(p.seconds):>10}")
        return "\n".join(rows)

    def __str__(self) -> str:
        out = [f"Scaling of {self.function} on {self.device}"
               + (f" (memory budget {fmt_bytes(self.budget_bytes)})" if self.budget_bytes else "")]
        out.append(self.table() if self.points else "  (no size could be measured)")
        if self.memory_fit:
            f = self.memory_fit
            out.append(f"memory: {f.big_o():<12} exponent {f.exponent:.2f}{_clamped(f)}, coefficient "
                       f"{f.coefficient:.3g} B, R² {f.r2:.3f} over {f.n} sizes ({f.confidence} confidence)")
        if self.time_fit:
            f = self.time_fit
            overhead = f" + {fmt_seconds(f.offset)} per call" if f.offset else ""
            out.append(f"time:   {f.big_o():<12} exponent {f.exponent:.2f}{_clamped(f)}{overhead}, R² {f.r2:.3f} "
                       f"over T ≥ {f.min_size:,} ({f.confidence} confidence)")
        t = self.target
        if t is not None:
            line = f"at T={t.size:,}: memory {fmt_bytes(t.peak_bytes)} (fit)"
            if t.meta_peak_bytes is not None and t.meta_from_sizes:
                line += (f", {fmt_bytes(t.meta_peak_bytes)} (meta runs up to T={max(t.meta_from_sizes):,}, "
                         "extrapolated)")
            elif t.meta_peak_bytes is not None:
                line += f", {fmt_bytes(t.meta_peak_bytes)} (meta run)"
            if t.seconds is not None:
                line += f"; time ≈ {fmt_seconds(t.seconds)}"
            out.append(line)
            if t.meta_assumptions:
                out.append("meta run assumed: " + "; ".join(t.meta_assumptions[:5])
                           + (f" (+{len(t.meta_assumptions) - 5} more)" if len(t.meta_assumptions) > 5 else ""))
        out.append("verdict: " + self.verdict())
        for s in self.skipped:
            out.append(f"skipped T={s['size']:,}: {s['reason']}")
        for w in self.warnings:
            out.append(f"warning: {w}")
        return "\n".join(out)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self) if not cycle else "ScalingResult(...)")

    # ------------------------------------------------------------------ findings
    def findings(self) -> list:
        """Findings the measurement supports (TR020 does not fit at the target, TR021 OOM in probe)."""
        from .rules import scaling_findings

        return scaling_findings(self)

    # ------------------------------------------------------------------ plot
    def plot(self):
        """A plotly Figure: memory and time against T (log-log) with fits carried to the target."""
        from .plot import scaling_figure

        return scaling_figure(self)

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {"text/plain": str(self)}
        try:
            fig = self.plot()
        except ImportError:  # plotly missing: text only
            return bundle
        bundle["application/vnd.plotly.v1+json"] = json.loads(fig.to_json())
        bundle["text/html"] = fig.to_html(include_plotlyjs="cdn", full_html=False)
        return bundle
