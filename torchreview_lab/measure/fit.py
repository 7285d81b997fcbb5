"""Power-law fits: pure functions on plain numbers (no torch).

``y = offset + coefficient * T ** exponent``: ``offset`` is a known constant (the time a harness
takes at a tiny size: Python and dispatch overheads that do not grow with T; zero for memory), and
``coefficient`` and ``exponent`` come from least squares on ``log (y - offset) = log c + e log T``.

A fitted exponent below 0 (memory or time that *falls* as T grows: noise, warm caches, a lucky
timing at the largest size) is no scaling law: it would predict a target size ever cheaper than the
sizes measured. Such a fit is taken as O(1) at the largest measured value (exponent 0, the
conservative constant), with ``raw_exponent`` keeping the fitted slope and confidence ``low``
(R² of the constant, 0, unless the data is flat within 5%).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

R2_GOOD = 0.98   # at or above: a power law describes the data
R2_POOR = 0.90   # below: the data is noisy or not a power law


@dataclass
class PowerLawFit:
    exponent: float
    coefficient: float
    r2: float
    n: int = 0            # points used
    min_size: int = 0     # smallest T used
    max_size: int = 0     # largest T used
    confidence: str = "high"  # high | medium | low
    offset: float = 0.0       # constant term added to the power law (time: per-call overhead)
    raw_exponent: Optional[float] = None  # the fitted slope when it was below 0 (then exponent is 0)

    @property
    def clamped(self) -> bool:
        """The fitted exponent was negative and the fit was taken as O(1) (see module doc)."""
        return self.raw_exponent is not None

    def predict(self, size: float) -> float:
        return self.offset + self.coefficient * float(size) ** self.exponent

    def inverse(self, value: float) -> Optional[float]:
        """Largest T with ``predict(T) <= value``; None when unbounded (exponent ~ 0 and it fits)."""
        if self.coefficient <= 0:
            return None
        value = value - self.offset
        if abs(self.exponent) < 0.05:
            return None if self.coefficient <= value else 0.0
        if value <= 0:
            return 0.0
        return (value / self.coefficient) ** (1.0 / self.exponent)

    @property
    def is_power_law(self) -> bool:
        return self.r2 >= R2_POOR

    def big_o(self) -> str:
        if abs(self.exponent) < 0.05:
            return "O(1)"
        return f"O(T^{self.exponent:.2f})"

    def to_json(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Optional[Dict]) -> Optional["PowerLawFit"]:
        if data is None:
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def fit_power_law(sizes: Sequence[float], values: Sequence[float], min_size: float = 0,
                  offset: float = 0.0) -> Optional[PowerLawFit]:
    """Least-squares fit of ``log (value - offset)`` on ``log size`` over the points with
    ``size >= min_size`` and ``value > offset``. Returns None with fewer than two usable points or a
    single distinct size. ``offset`` must be below every value it is to be taken from (the caller
    measures it: see :func:`torchreview_lab.measure.probe.scale`)."""
    offset = max(0.0, float(offset or 0.0))
    pts = [(float(s), float(v) - offset) for s, v in zip(sizes, values)
           if s >= min_size and s > 0 and v is not None and v - offset > 0]
    if len(pts) < 2 or len({s for s, _ in pts}) < 2:
        return None
    xs = [math.log(s) for s, _ in pts]
    ys = [math.log(v) for _, v in pts]
    n = len(pts)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    vals = [v for _, v in pts]
    flat = ss_tot <= 1e-12 * max(1.0, n) or max(vals) <= 1.05 * min(vals)
    if flat:
        r2 = 1.0  # flat within 5%: a constant describes it (R² of a flat line is meaningless)
    else:
        r2 = max(0.0, 1.0 - ss_res / ss_tot)
    if abs(slope) < 1e-6:
        slope = 0.0
    raw = None
    if slope < 0:  # falls with T: not a scaling law; O(1) at the largest value (see module doc)
        raw, slope, intercept = slope, 0.0, math.log(max(vals))
        if not flat:  # R² of that constant (0 or close: the data does vary)
            r2 = max(0.0, 1.0 - sum((y - intercept) ** 2 for y in ys) / ss_tot)
    fit = PowerLawFit(exponent=slope, coefficient=math.exp(intercept), r2=r2, n=n,
                      min_size=int(min(s for s, _ in pts)), max_size=int(max(s for s, _ in pts)), offset=offset,
                      raw_exponent=raw)
    fit.confidence = "low" if raw is not None and not flat else confidence(fit)
    return fit


def confidence(fit: PowerLawFit, min_points: int = 3) -> str:
    if fit.r2 >= R2_GOOD and fit.n >= min_points:
        return "high"
    if fit.r2 >= R2_POOR:
        return "medium"
    return "low"
