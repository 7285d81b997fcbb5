"""Human formatting of bytes, seconds and sizes (SI units, 3 significant digits)."""
from __future__ import annotations

from typing import Optional


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s >= 3600:
        return f"{s / 3600:.3g} h"
    if s >= 60:
        return f"{s / 60:.3g} min"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def fmt_size(t: Optional[float]) -> str:
    """T with thousands separators, rounded to 3 significant digits when large (an estimate)."""
    if t is None:
        return "-"
    t = float(t)
    if t >= 1000:
        from math import floor, log10

        digits = int(floor(log10(t))) - 2
        t = round(t / 10 ** digits) * 10 ** digits
    return f"{int(t):,}"
