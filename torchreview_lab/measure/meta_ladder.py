"""The meta figure at a target size, also for harnesses that loop over T in Python.

A meta run costs about 0.1 ms per op whatever the shapes, so a vectorized harness runs on meta at
T = 400,000 in milliseconds, but one that loops over T in Python issues millions of ops there and
cannot finish in an interactive time limit. :func:`meta_at_target` counts the ops of two short
meta runs (``pilot`` and twice that), predicts the op count and the seconds of the run at the
target, and then either

* runs the harness at the target on meta (the exact figure, as :func:`~.meta.meta_run` alone), or
* when that run would not finish in the time left, runs meta at a ladder of doubling sizes from the
  pilot up to what the time allows and passes ``a + b·T^e`` through the top three rungs. Meta bytes
  have no noise, so the law is exact for a constant plus a power of T and close for a polynomial
  (the top rungs carry the leading term); the figure is marked as extrapolated (``extrapolated_from``) and never passes
  for an exact one.
"""
from __future__ import annotations

import math
import time
from typing import Callable, List, Optional

from .fit import fit_power_law
from .meta import MetaRun, meta_run

LADDER_FIT_RUNGS = 3     # the power law goes through the top rungs (the leading term near the target)
MIN_LADDER_SPAN = 4      # rungs must span at least this ratio of sizes for an extrapolation
TIME_SAFETY = 1.5        # a predicted run must fit in the time left with this margin


def meta_at_target(harness: Callable, size: int, time_limit: float = 10.0, backward: bool = False,
                   pilot: Optional[int] = None) -> MetaRun:
    """The meta prediction at ``size`` within ``time_limit`` seconds: an exact run when it can
    finish, else a power law through exact meta runs at smaller sizes. ``pilot``: the first, smallest
    size of the ladder, where the op count is first measured (default ``size // 1024``, at least 16;
    the probe passes its smallest measured T). The ladder doubles from there while the time lasts,
    so its top rung is the largest size the time limit affords (about a third of it)."""
    size = int(size)
    deadline = time.perf_counter() + max(0.0, float(time_limit))
    pilot = max(1, int(pilot if pilot else max(16, size // 1024)))
    if 2 * pilot >= size:
        return meta_run(harness, size, time_limit=time_limit, backward=backward)
    runs: List[MetaRun] = []
    for s in (pilot, 2 * pilot):
        r = meta_run(harness, s, time_limit=_left(deadline), backward=backward)
        if not r.ok:  # the harness cannot run on meta at all: the target run would fail the same way
            return _relabel(r, size)
        runs.append(r)
    predicted = _predicted_seconds(runs, size)
    if predicted * TIME_SAFETY <= _left(deadline):
        exact = meta_run(harness, size, time_limit=_left(deadline), backward=backward)
        if not exact.timed_out:
            return _merge_assumptions(exact, runs)
    # ---- the ladder: doubling sizes while the next rung is predicted to fit in the time left
    s = 2 * pilot
    while 2 * s < size and _predicted_seconds(runs, 2 * s) * TIME_SAFETY <= _left(deadline):
        r = meta_run(harness, 2 * s, time_limit=_left(deadline), backward=backward)
        if not r.ok:
            break
        runs.append(r)
        s *= 2
    return _extrapolate(runs, size)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.perf_counter())


def _predicted_ops(runs: List[MetaRun], size: int) -> float:
    """Ops of a meta run at ``size``: the op count's growth between the two largest runs, carried on."""
    a, b = runs[-2], runs[-1]
    ops_a, ops_b = max(1, a.ops), max(1, b.ops)
    growth = max(0.0, math.log(ops_b / ops_a) / math.log(b.size / a.size))
    return ops_b * (size / b.size) ** growth


def _predicted_seconds(runs: List[MetaRun], size: int) -> float:
    """Seconds of a meta run at ``size``, at the seconds per op the largest run took."""
    return _predicted_ops(runs, size) * runs[-1].seconds / max(1, runs[-1].ops)


def _extrapolate(runs: List[MetaRun], size: int) -> MetaRun:
    res = MetaRun(size=size, seconds=sum(r.seconds for r in runs), ops=sum(r.ops for r in runs))
    _merge_assumptions(res, runs)
    top = runs[-LADDER_FIT_RUNGS:]
    span = top[-1].size / top[0].size
    why = (f"a meta run at T={size:,} would take ≈{_predicted_seconds(runs, size):.0f} s "
           f"({int(_predicted_ops(runs, size)):,} ops: "
           "a Python loop over T?)")
    law = _law_through(top) if len(top) == LADDER_FIT_RUNGS and span >= MIN_LADDER_SPAN else None
    if law is None:
        res.skipped_reason = f"{why}; the time limit left no room for meta runs spanning {MIN_LADDER_SPAN}x below it"
        return res
    const, coef, exponent = law
    res.peak_bytes = int(round(const + coef * size ** exponent))
    res.extrapolated_from = [r.size for r in runs]
    res.note = (f"{why}: extrapolated as O(T^{exponent:.2f}) from exact meta runs at "
                f"T={top[0].size:,}–{top[-1].size:,}")
    return res


def _law_through(top: List[MetaRun]):
    """``(a, b, e)`` with ``bytes = a + b * T**e`` through three exact rungs at doubling sizes: the
    constant a (weights, buffers) kept apart from the part that grows, which a plain power law would
    flatten into a small exponent and under-predict far out. Falls back to a plain power law when the
    differences do not grow geometrically (a non-monotone or noisy figure)."""
    (s1, y1), (s2, y2), (s3, y3) = [(r.size, float(r.peak_bytes)) for r in top]
    d1, d2 = y2 - y1, y3 - y2
    if d1 == 0 and d2 == 0:
        return y3, 0.0, 0.0  # constant
    if d1 > 0 and d2 > 0 and s2 == 2 * s1 and s3 == 2 * s2:
        ratio = d2 / d1
        exponent = math.log2(ratio)
        if exponent > 0.05:
            coef = d1 / (s1 ** exponent * (ratio - 1.0))
            return y1 - coef * s1 ** exponent, coef, exponent
    fit = fit_power_law([s1, s2, s3], [y1, y2, y3])
    return None if fit is None else (0.0, fit.coefficient, fit.exponent)


def _merge_assumptions(res: MetaRun, runs: List[MetaRun]) -> MetaRun:
    for r in runs:
        for a in r.assumptions:
            if a not in res.assumptions:
                res.assumptions.append(a)
    return res


def _relabel(run: MetaRun, size: int) -> MetaRun:
    """A pilot's failure, said of the target (the reason keeps the pilot's size and site)."""
    out = MetaRun(size=size, seconds=run.seconds, ops=run.ops, assumptions=list(run.assumptions))
    out.skipped_reason = run.skipped_reason
    return out
