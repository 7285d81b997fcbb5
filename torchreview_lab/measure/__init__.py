"""Dynamic review: measure memory and time against T, fit, predict, and run runtime checks.

* :func:`scale` — the scaling probe → :class:`ScalingResult` (text, JSON, plotly figure).
* :func:`check` — runtime checks (TR010-TR016) → :class:`CheckResult`, a list of Findings.
* :func:`compare` — two implementations agree on outputs and gradients → :class:`CompareResult`.

Conventions and rule codes: ``docs/measure.md``.
"""
from __future__ import annotations

from .checks import CheckResult, check
from .compare import CompareResult, compare
from .fit import PowerLawFit, fit_power_law
from .meta import MetaRun, meta_run
from .probe import scale
from .result import Point, ScalingResult, TargetPrediction
from .rules import RULES

__all__ = ["scale", "check", "compare", "ScalingResult", "Point", "TargetPrediction", "PowerLawFit",
           "fit_power_law", "meta_run", "MetaRun", "CheckResult", "CompareResult", "RULES"]
