"""The plotly figure of a :class:`~.result.ScalingResult` (plotly is imported lazily).

Two log-log panels, memory and time against T: measured points, the fitted power law carried out
to the target, the device's memory and the budget as horizontal lines, and the meta-device
prediction as a marker at the target.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, List

from ._format import fmt_bytes, fmt_seconds

if TYPE_CHECKING:
    from .result import ScalingResult


def _geom(lo: float, hi: float, n: int = 60) -> List[float]:
    if hi <= lo:
        return [lo]
    a, b = math.log(lo), math.log(hi)
    return [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]


def scaling_figure(res: "ScalingResult"):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("peak memory above baseline", "time per call"),
                        horizontal_spacing=0.12)
    sizes = [p.size for p in res.points]
    tgt = res.target
    hi = max(sizes + ([tgt.size] if tgt else [])) if (sizes or tgt) else 1
    lo = min(sizes) if sizes else hi

    # -- memory
    fig.add_trace(go.Scatter(x=sizes, y=[p.peak_bytes for p in res.points], mode="markers", name="measured memory",
                             marker=dict(size=9, color="#1f77b4"),
                             text=[fmt_bytes(p.peak_bytes) for p in res.points],
                             hovertemplate="T=%{x:,}<br>%{text}<extra></extra>"), row=1, col=1)
    mf = res.memory_fit
    if mf is not None and sizes:
        xs = _geom(lo, hi)
        fig.add_trace(go.Scatter(x=xs, y=[mf.predict(x) for x in xs], mode="lines",
                                 name=f"fit {mf.big_o()} (R² {mf.r2:.3f})", line=dict(color="#1f77b4", dash="dash")),
                      row=1, col=1)
    if tgt is not None:
        if tgt.peak_bytes is not None:
            fig.add_trace(go.Scatter(x=[tgt.size], y=[tgt.peak_bytes], mode="markers", name="fit at target",
                                     marker=dict(symbol="star", size=14, color="#1f77b4"),
                                     hovertemplate=f"T={tgt.size:,}<br>{fmt_bytes(tgt.peak_bytes)} (fit)<extra></extra>"),
                          row=1, col=1)
        if tgt.meta_peak_bytes is not None:
            how = (f"meta runs up to T={max(tgt.meta_from_sizes):,}, extrapolated" if tgt.meta_from_sizes
                   else "meta")
            fig.add_trace(go.Scatter(x=[tgt.size], y=[tgt.meta_peak_bytes], mode="markers",
                                     name="meta-device runs, extrapolated" if tgt.meta_from_sizes else "meta-device run",
                                     marker=dict(symbol="diamond-open", size=14, color="#d62728", line=dict(width=2)),
                                     hovertemplate=f"T={tgt.size:,}<br>{fmt_bytes(tgt.meta_peak_bytes)} ({how})<extra></extra>"),
                          row=1, col=1)
        if tgt.device_bytes:
            fig.add_hline(y=tgt.device_bytes, line=dict(color="#d62728", width=2), row=1, col=1,
                          annotation_text=f"{res.device} memory {fmt_bytes(tgt.device_bytes)}",
                          annotation_position="top left")
    if res.budget_bytes:
        fig.add_hline(y=res.budget_bytes, line=dict(color="#ff7f0e", dash="dot"), row=1, col=1,
                      annotation_text=f"probe budget {fmt_bytes(res.budget_bytes)}", annotation_position="bottom right")

    # -- time
    fig.add_trace(go.Scatter(x=sizes, y=[p.seconds for p in res.points], mode="markers", name="measured time",
                             marker=dict(size=9, color="#2ca02c"), text=[fmt_seconds(p.seconds) for p in res.points],
                             hovertemplate="T=%{x:,}<br>%{text}<extra></extra>"), row=1, col=2)
    tf = res.time_fit
    if tf is not None and sizes:
        xs = _geom(lo, hi)
        fig.add_trace(go.Scatter(x=xs, y=[tf.predict(x) for x in xs], mode="lines",
                                 name=f"fit {tf.big_o()} ({tf.confidence} confidence)",
                                 line=dict(color="#2ca02c", dash="dash")), row=1, col=2)
        if tgt is not None and tgt.seconds is not None:
            fig.add_trace(go.Scatter(x=[tgt.size], y=[tgt.seconds], mode="markers", name="time at target",
                                     marker=dict(symbol="star", size=14, color="#2ca02c"),
                                     hovertemplate=f"T={tgt.size:,}<br>{fmt_seconds(tgt.seconds)}<extra></extra>"),
                          row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(type="log", title_text="T", row=1, col=col)
    fig.update_yaxes(type="log", title_text="bytes", row=1, col=1)
    fig.update_yaxes(type="log", title_text="seconds", row=1, col=2)
    fig.update_layout(title=dict(text=f"{res.function} on {res.device}: {res.verdict()}", font=dict(size=13)),
                      template="plotly_white", height=430, legend=dict(orientation="h", y=-0.22))
    return fig
