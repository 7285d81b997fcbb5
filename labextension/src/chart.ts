/**
 * The scaling charts: peak memory and time against T on log-log axes, the same content as
 * `torchreview_lab/measure/plot.py` (measured points, the fitted power law carried out to the
 * target, the fit and the meta-device run at the target, the device's memory and the probe budget
 * as horizontal lines, the target as a vertical line), with every run overlaid as a trace group.
 *
 * plotly.js (≈4.4 MiB) is loaded on first use, in its own chunk. Colours come from the JupyterLab
 * theme's `--jp-*` variables, read each time a chart is drawn.
 */
import type { Config, Data, Layout } from 'plotly.js-dist-min';

import { bigO, fmtBytes, fmtSeconds, fmtSize } from './format';
import { IPoint, IRun, ITarget } from './scaling';

type PlotlyModule = typeof import('plotly.js-dist-min');

let plotly: Promise<PlotlyModule> | null = null;

/** plotly.js, loaded once, lazily (a dynamic import: webpack puts it in its own chunk). */
export function loadPlotly(): Promise<PlotlyModule> {
  if (!plotly) {
    plotly = import(/* webpackChunkName: "plotly" */ 'plotly.js-dist-min').then(
      (m: any) => (m.default ?? m) as PlotlyModule
    );
    plotly.catch(() => {
      plotly = null; // let a later draw try again
    });
  }
  return plotly;
}

/** The theme colours the charts use, read from the `--jp-*` CSS variables now. */
export interface IChartTheme {
  background: string;
  font: string;
  fontMuted: string;
  fontFamily: string;
  grid: string;
  axis: string;
  device: string;
  budget: string;
  target: string;
}

export function readTheme(el: Element = document.body): IChartTheme {
  const style = getComputedStyle(el);
  const v = (name: string, fallback: string) => style.getPropertyValue(name).trim() || fallback;
  return {
    background: v('--jp-layout-color1', '#ffffff'),
    font: v('--jp-ui-font-color1', '#212121'),
    fontMuted: v('--jp-ui-font-color2', '#616161'),
    fontFamily: v('--jp-ui-font-family', 'system-ui, sans-serif'),
    grid: v('--jp-border-color2', '#e0e0e0'),
    axis: v('--jp-border-color1', '#bdbdbd'),
    device: v('--jp-error-color1', '#d32f2f'),
    budget: v('--jp-warn-color1', '#f57c00'),
    target: v('--jp-ui-font-color2', '#616161')
  };
}

export interface IFigure {
  data: Data[];
  layout: Layout;
}

function geom(lo: number, hi: number, n = 48): number[] {
  if (!(hi > lo)) {
    return [lo];
  }
  const a = Math.log(lo);
  const b = Math.log(hi);
  return Array.from({ length: n }, (_, i) => Math.exp(a + ((b - a) * i) / (n - 1)));
}

function pointsOf(run: IRun): IPoint[] {
  const r = run.probe.result;
  return r && r.points.length ? r.points : run.probe.points;
}

/** The legend entry of a run: `harness_exact  O(T^1.00)` once fitted. */
export function legendName(run: IRun): string {
  const mf = run.probe.result?.memory_fit;
  if (mf) {
    return `${run.function}  ${bigO(mf.exponent)}`;
  }
  return run.probe.state === 'running' ? `${run.function}  (measuring…)` : run.function;
}

function xRange(runs: IRun[]): [number, number] | null {
  const xs: number[] = [];
  for (const run of runs) {
    for (const p of pointsOf(run)) {
      xs.push(p.size);
    }
    xs.push(run.probe.result?.target?.size ?? run.target);
  }
  if (!xs.length) {
    return null;
  }
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  // log10 range with a margin: the target's markers and label sit inside the frame
  return [Math.log10(lo) - 0.25, Math.log10(hi) + 0.3];
}

function baseLayout(theme: IChartTheme, title: string, yTitle: string, ySuffix: string): Layout {
  const axis = {
    type: 'log',
    gridcolor: theme.grid,
    linecolor: theme.axis,
    zeroline: false,
    exponentformat: 'SI',
    tickfont: { size: 10, color: theme.fontMuted },
    title: { font: { size: 11, color: theme.fontMuted } },
    automargin: true
  };
  return {
    title: { text: title, font: { size: 12, color: theme.font }, x: 0.01, xanchor: 'left', y: 0.98 },
    paper_bgcolor: theme.background,
    plot_bgcolor: theme.background,
    font: { family: theme.fontFamily, color: theme.font, size: 11 },
    margin: { l: 48, r: 10, t: 30, b: 34 },
    // one tick per decade: 1000, 10k, 100k / 1MB, 10MB … / 10ms, 100ms, 1s …
    xaxis: { ...axis, dtick: 1, title: { ...axis.title, text: 'T', standoff: 4 } },
    yaxis: { ...axis, dtick: 1, ticksuffix: ySuffix, title: { ...axis.title, text: yTitle } },
    hoverlabel: { font: { family: theme.fontFamily, size: 11 } },
    showlegend: false,
    shapes: [] as unknown[],
    annotations: [] as unknown[]
  };
}

function targetLines(runs: IRun[], theme: IChartTheme, layout: Layout, label: boolean): void {
  const targets = Array.from(new Set(runs.map(r => r.probe.result?.target?.size ?? r.target)));
  for (const t of targets) {
    (layout.shapes as unknown[]).push({
      type: 'line',
      xref: 'x',
      yref: 'paper',
      x0: t,
      x1: t,
      y0: 0,
      y1: 1,
      line: { color: theme.target, width: 1.5, dash: 'dot' }
    });
    if (label) {
      (layout.annotations as unknown[]).push({
        xref: 'x',
        yref: 'paper',
        x: Math.log10(t),
        y: 1,
        yanchor: 'bottom',
        xanchor: 'right',
        text: `target T=${fmtSize(t)}`,
        showarrow: false,
        font: { size: 10, color: theme.fontMuted }
      });
    }
  }
}

type IFit = NonNullable<NonNullable<IRun['probe']['result']>['memory_fit']>;

/** What differs between the memory and the time series of one run. */
interface ISeries {
  value: (p: IPoint) => number;
  fit: IFit | null | undefined;
  atTarget: number | null | undefined;
  fmt: (v: number) => string;
  measuredName: string;
  measuredHover: string;
  markerSize: number;
  fitName: (fit: IFit) => string;
  fitHover: (fit: IFit) => string;
  targetName: string;
  targetSize: number;
}

/** One run's measured points, its fitted power law carried to the target, and the fit's value there. */
function seriesTraces(run: IRun, theme: IChartTheme, s: ISeries): Data[] {
  const pts = pointsOf(run);
  const t = run.probe.result?.target;
  const group = `run-${run.key}`;
  const out: Data[] = [
    {
      type: 'scatter',
      mode: 'markers',
      name: s.measuredName,
      legendgroup: group,
      meta: { role: 'measured', function: run.function },
      x: pts.map(p => p.size),
      y: pts.map(s.value),
      text: pts.map(p => s.fmt(s.value(p))),
      marker: { size: s.markerSize, color: run.color, line: { width: 1, color: theme.background } },
      hovertemplate: `<b>${run.function}</b><br>T=%{x:,}<br>%{text} ${s.measuredHover}<extra></extra>`
    } as Data
  ];
  const fit = s.fit;
  if (fit && pts.length) {
    const lo = Math.min(...pts.map(p => p.size));
    const hi = Math.max(t?.size ?? 0, ...pts.map(p => p.size));
    const xs = geom(lo, hi);
    const ys = xs.map(x => (fit.offset ?? 0) + fit.coefficient * Math.pow(x, fit.exponent));
    out.push({
      type: 'scatter',
      mode: 'lines',
      name: s.fitName(fit),
      legendgroup: group,
      showlegend: false,
      meta: { role: 'fit', function: run.function },
      x: xs,
      y: ys,
      text: ys.map(y => s.fmt(y)),
      line: { color: run.color, width: 2, dash: 'dash' },
      hovertemplate: `<b>${run.function}</b> ${s.fitHover(fit)}<br>T=%{x:,.0f}<br>%{text}<extra></extra>`
    } as Data);
    if (t && s.atTarget !== null && s.atTarget !== undefined) {
      out.push({
        type: 'scatter',
        mode: 'markers',
        name: s.targetName,
        legendgroup: group,
        showlegend: false,
        meta: { role: 'target-fit', function: run.function },
        x: [t.size],
        y: [s.atTarget],
        marker: { symbol: 'star', size: s.targetSize, color: run.color, line: { width: 1, color: theme.background } },
        hovertemplate: `<b>${run.function}</b> at the target<br>T=${fmtSize(t.size)}<br>${s.fmt(s.atTarget)} (fit)<extra></extra>`
      } as Data);
    }
  }
  return out;
}

/** Peak memory against T: every run, the device's memory, the probe budget, the target. */
export function memoryFigure(runs: IRun[], theme: IChartTheme): IFigure {
  const layout = baseLayout(theme, 'Peak memory above baseline', 'peak memory', 'B');
  const data: Data[] = [];
  const range = xRange(runs);
  if (range) {
    (layout.xaxis as any).range = range;
  }
  let metaLegend = false;
  for (const run of runs) {
    const r = run.probe.result;
    const t = r?.target;
    data.push(
      ...seriesTraces(run, theme, {
        value: p => p.peak_bytes,
        fit: r?.memory_fit,
        atTarget: t?.peak_bytes,
        fmt: fmtBytes,
        measuredName: legendName(run),
        measuredHover: '(measured)',
        markerSize: 9,
        fitName: fit => `${run.function} fit ${bigO(fit.exponent)}`,
        fitHover: fit => `fit ${bigO(fit.exponent)} (R² ${fit.r2.toFixed(3)})`,
        targetName: `${run.function} fit at T`,
        targetSize: 14
      })
    );
    if (t && t.meta_peak_bytes !== null && t.meta_peak_bytes !== undefined) {
      data.push({
        type: 'scatter',
        mode: 'markers',
        name: 'meta-device run at T',
        legendgroup: 'meta',
        showlegend: !metaLegend,
        meta: { role: 'meta', function: run.function },
        x: [t.size],
        y: [t.meta_peak_bytes],
        marker: { symbol: 'diamond-open', size: 14, color: run.color, line: { width: 2.5 } },
        hovertemplate: `<b>${run.function}</b> ${metaHow(t)}<br>T=${fmtSize(t.size)}<br>${fmtBytes(t.meta_peak_bytes)}<extra></extra>`
      });
      metaLegend = true;
    }
  }
  // Horizontal lines: the device's memory (one per device measured on), the latest probe budget.
  const devices = new Map<string, number>();
  for (const run of runs) {
    const r = run.probe.result;
    if (r?.target?.device_bytes) {
      devices.set(r.device, r.target.device_bytes);
    }
  }
  if (range) {
    const x = [Math.pow(10, range[0]), Math.pow(10, range[1])];
    let first = true;
    for (const [device, bytes] of devices) {
      data.push({
        type: 'scatter',
        mode: 'lines',
        name: 'device memory',
        legendgroup: 'device',
        showlegend: first,
        meta: { role: 'device', device, bytes },
        x,
        y: [bytes, bytes],
        line: { color: theme.device, width: 2 },
        hovertemplate: `${device} memory<br>${fmtBytes(bytes)}<extra></extra>`
      });
      (layout.annotations as unknown[]).push({
        xref: 'paper',
        yref: 'y',
        x: 0.01,
        y: Math.log10(bytes),
        xanchor: 'left',
        yanchor: 'bottom',
        text: `${device} memory ${fmtBytes(bytes)}`,
        showarrow: false,
        font: { size: 10, color: theme.device }
      });
      first = false;
    }
    const latest = runs.length ? runs[runs.length - 1].probe.result : null;
    if (latest?.budget_bytes) {
      data.push({
        type: 'scatter',
        mode: 'lines',
        name: 'probe budget',
        showlegend: false,
        meta: { role: 'budget', bytes: latest.budget_bytes },
        x,
        y: [latest.budget_bytes, latest.budget_bytes],
        line: { color: theme.budget, width: 1, dash: 'dot' },
        hovertemplate: `probe budget<br>${fmtBytes(latest.budget_bytes)}<extra></extra>`
      });
      (layout.annotations as unknown[]).push({
        xref: 'paper',
        yref: 'y',
        x: 0.01,
        y: Math.log10(latest.budget_bytes),
        xanchor: 'left',
        yanchor: 'top',
        text: `probe budget ${fmtBytes(latest.budget_bytes)}`,
        showarrow: false,
        font: { size: 9, color: theme.budget }
      });
    }
  }
  targetLines(runs, theme, layout, true);
  Object.assign(layout, {
    showlegend: runs.length > 0,
    legend: {
      orientation: 'h',
      x: 0,
      xanchor: 'left',
      y: -0.2,
      yanchor: 'top',
      font: { size: 11, color: theme.font },
      bgcolor: 'rgba(0,0,0,0)'
    },
    margin: { l: 48, r: 10, t: 30, b: 8 }
  });
  return { data, layout };
}

/** Time per call against T: every run's points, its fit carried to the target. */
export function timeFigure(runs: IRun[], theme: IChartTheme): IFigure {
  const layout = baseLayout(theme, 'Time per call', 'seconds', 's');
  const data: Data[] = [];
  const range = xRange(runs);
  if (range) {
    (layout.xaxis as any).range = range;
  }
  for (const run of runs) {
    const r = run.probe.result;
    data.push(
      ...seriesTraces(run, theme, {
        value: p => p.seconds,
        fit: r?.time_fit,
        atTarget: r?.target?.seconds,
        fmt: fmtSeconds,
        measuredName: run.function,
        measuredHover: 'per call',
        markerSize: 8,
        fitName: () => `${run.function} time fit`,
        fitHover: fit => `fit ${bigO(fit.exponent)}${fit.confidence ? ` (${fit.confidence} confidence)` : ''}`,
        targetName: `${run.function} time at T`,
        targetSize: 13
      })
    );
  }
  targetLines(runs, theme, layout, false);
  return { data, layout };
}

export const CHART_CONFIG: Config = {
  displaylogo: false,
  responsive: true,
  modeBarButtonsToRemove: ['lasso2d', 'select2d', 'autoScale2d'],
  toImageButtonOptions: { format: 'png', filename: 'torchreview-scaling', scale: 2 }
};

// Plotly's react/resize/purge on one element must not interleave: a purge (the chart unmounting
// when the user switches tab) that lands in the middle of an asynchronous redraw (a theme change)
// makes plotly remove nodes that are already gone. Each element gets one queue of operations.
const queues = new WeakMap<HTMLElement, Promise<void>>();

function enqueue(el: HTMLElement, op: (Plotly: PlotlyModule) => unknown): Promise<void> {
  const previous = queues.get(el) ?? Promise.resolve();
  const next = previous
    .then(async () => {
      const Plotly = await loadPlotly();
      await op(Plotly);
    })
    .catch(err => {
      console.warn('torchreview: chart update failed', err);
    });
  queues.set(el, next);
  return next;
}

/** Draw (or update in place) a figure into `el`. */
export function draw(el: HTMLElement, figure: IFigure): Promise<void> {
  return enqueue(el, Plotly => {
    if (el.isConnected) {
      return Plotly.react(el, figure.data, figure.layout, CHART_CONFIG);
    }
  });
}

export function resize(el: HTMLElement): Promise<void> {
  if (!plotly) {
    return Promise.resolve();
  }
  return enqueue(el, Plotly => {
    if (el.isConnected && (el as any)._fullLayout) {
      Plotly.Plots.resize(el);
    }
  });
}

export function purge(el: HTMLElement): Promise<void> {
  if (!plotly) {
    return Promise.resolve();
  }
  return enqueue(el, Plotly => Plotly.purge(el));
}

/** How a meta figure was made: one exact run at the target, or extrapolated from smaller exact runs. */
export function metaHow(t: ITarget): string {
  const from = t.meta_from_sizes ?? [];
  return from.length
    ? `meta-device runs up to T=${fmtSize(Math.max(...from))}, extrapolated`
    : 'meta-device run';
}
