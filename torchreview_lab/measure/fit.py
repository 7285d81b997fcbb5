"""Power-law fits: pure functions on plain numbers (no torch).

``y = offset + coefficient * T ** exponent``: ``offset`` is a known constant (the time a harness
takes at a tiny size: Python and dispatch overheads that do not grow with T; zero for memory), and
``coefficient`` and ``exponent`` come from least squares on ``log (y - offset) = log c + e log T``.
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
    if ss_tot <= 1e-12 * max(1.0, n) or max(vals) <= 1.05 * min(vals):
        r2 = 1.0  # flat within 5%: a constant describes it (R² of a flat line is meaningless)
    else:
        r2 = max(0.0, 1.0 - ss_res / ss_tot)
    if abs(slope) < 1e-6:
        slope = 0.0
    fit = PowerLawFit(exponent=slope, coefficient=math.exp(intercept), r2=r2, n=n,
                      min_size=int(min(s for s, _ in pts)), max_size=int(max(s for s, _ in pts)), offset=offset)
    fit.confidence = confidence(fit)
    return fit


def confidence(fit: PowerLawFit, min_points: int = 3) -> str:
    if fit.r2 >= R2_GOOD and fit.n >= min_points:
        return "high"
    if fit.r2 >= R2_POOR:
        return "medium"
    return "low"
