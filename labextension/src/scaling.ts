import { ISignal, Signal } from '@lumino/signaling';

import { Finding } from './findings.gen';
import { bigO, fmtBytes, fmtSize } from './format';
import { IReviewTarget } from './model';
import { RequestError, requestAPI } from './request';

// ---------------------------------------------------------------- server data (probes.py, result.py)

/** A function defined in the notebook's kernel that can be called as `f(T)`. */
export interface IProbeFunction {
  name: string;
  signature: string;
  parameter: string;
  doc: string;
  harness: boolean;
  size_like: boolean;
  /** Notebook functions and classes it reaches (directly or through others). */
  calls?: string[];
  cell: number | null;
  line: number | null;
}

export interface IPoint {
  size: number;
  peak_bytes: number;
  seconds: number;
}

export interface IPowerLawFit {
  exponent: number;
  coefficient: number;
  r2: number;
  n?: number;
  min_size?: number;
  max_size?: number;
  confidence?: string;
  /** Constant term (time fits: per-call overhead in seconds); the law is offset + coefficient·T^exponent. */
  offset?: number;
}

export interface ITarget {
  size: number;
  peak_bytes: number | null;
  seconds: number | null;
  meta_peak_bytes: number | null;
  device_bytes: number | null;
  device_free_bytes: number | null;
  fits: boolean | null;
  max_size_that_fits: number | null;
  meta_skipped_reason?: string | null;
  /** Non-empty: meta_peak_bytes was extrapolated from exact meta runs at these sizes. */
  meta_from_sizes?: number[];
}

export interface ISkipped {
  size: number;
  reason: string;
  kind: string;
}

export interface IProbeError {
  kind: string;
  message: string;
  cell?: number | null;
  line?: number | null;
  text?: string | null;
}

/** `ScalingResult.to_json()` plus what the server adds (verdict, harness error, site). */
export interface IScalingResult {
  function: string;
  device: string;
  points: IPoint[];
  memory_fit: IPowerLawFit | null;
  time_fit: IPowerLawFit | null;
  target: ITarget | null;
  skipped: ISkipped[];
  warnings: string[];
  budget_bytes: number | null;
  verdict?: string | null;
  harness_error?: IProbeError | null;
}

export type ProbeState = 'running' | 'done' | 'error' | 'cancelled';

export interface IProbe {
  id: string;
  function: string;
  state: ProbeState;
  points: IPoint[];
  result: IScalingResult | null;
  error: IProbeError | null;
  findings: Finding[];
  notes: string[];
  elapsed: number;
}

export type Device = 'auto' | 'cpu' | 'cuda';
export const DEVICES: readonly Device[] = ['auto', 'cpu', 'cuda'];
export const DEFAULT_SIZES = [256, 512, 1024, 2048];

/** One run of a probe, as the panel keeps it (a trace group on the chart). */
export interface IRun {
  key: number;
  path: string;
  function: string;
  color: string;
  target: number;
  probe: IProbe;
  /** The static finding that asked for this run ("Measure scaling"), if any. */
  forFinding: string | null;
}

/** Categorical colours readable on light and dark themes (Tableau 10 without red: red is the device-memory line). */
export const RUN_COLORS = ['#f28e2b', '#4e79a7', '#59a14f', '#b07aa1', '#edc948', '#76b7b2', '#ff9da7', '#9c755f'];

/** The one-sentence verdict (the engine's own when the server sent it). */
export function verdictOf(result: IScalingResult | null): string {
  if (!result) {
    return '';
  }
  if (result.verdict) {
    return result.verdict;
  }
  const mf = result.memory_fit;
  const t = result.target;
  if (!mf) {
    return `Not enough measurements to fit memory against T (${result.points.length} points).`;
  }
  if (!t) {
    return `${bigO(mf.exponent)} memory.`;
  }
  const pred = Math.max(t.peak_bytes ?? 0, t.meta_peak_bytes ?? 0);
  let s = `${bigO(mf.exponent)} memory: ${fmtBytes(pred)} at T=${fmtSize(t.size)}`;
  if (t.fits !== null) {
    s += ` — ${t.fits ? 'fits' : 'does not fit'} in ${fmtBytes(t.device_bytes)}`;
  }
  return s;
}

/** The short evidence line a static finding shows once a probe measured its function. */
export function measuredLine(run: IRun): string {
  const r = run.probe.result;
  if (!r) {
    return run.probe.state === 'running'
      ? `measuring ${run.function}…`
      : `${run.function}: ${run.probe.error?.message ?? run.probe.state}`;
  }
  const mf = r.memory_fit;
  const t = r.target;
  const parts = [`measured ${mf ? bigO(mf.exponent) : 'memory'} with ${run.function}`];
  if (t) {
    const pred = Math.max(t.peak_bytes ?? 0, t.meta_peak_bytes ?? 0);
    let at = `${fmtBytes(pred)} at T=${fmtSize(t.size)}`;
    if (t.fits !== null && t.fits !== undefined) {
      at += ` — ${t.fits ? 'fits' : 'does not fit'} in ${fmtBytes(t.device_bytes)}`;
    }
    parts.push(at);
  }
  return parts.join(', ');
}

/** A plain-language message for a failed server call. */
export function explainRequestError(error: unknown): string {
  if (error instanceof RequestError) {
    if (error.status === 404) {
      return `No kernel is running for this notebook: start the notebook's kernel and run its cells, then try again. (${error.message})`;
    }
    if (error.status === 409) {
      return error.message; // busy, dead, already probing, or torchreview_lab not importable: the server says which
    }
    return error.message;
  }
  return error instanceof Error ? error.message : String(error);
}

export interface IProbeSettings {
  target: number;
  sizes: number[];
  timeBudget: number;
  /** `memoryBudget`: a fraction of free device memory (<= 1) or bytes (> 1). */
  memoryBudget: number;
  isolated: boolean;
}

/** Parse "256, 512 1024;2048" into sizes, or say what is wrong. */
export function parseSizes(text: string): number[] | string {
  const parts = text
    .split(/[\s,;]+/)
    .map(s => s.trim().replace(/_/g, ''))
    .filter(s => s.length > 0);
  if (parts.length === 0) {
    return 'give at least one size';
  }
  const out: number[] = [];
  for (const p of parts) {
    if (!/^\d+$/.test(p) || Number(p) <= 0) {
      return `"${p}" is not a positive whole number`;
    }
    out.push(Number(p));
  }
  if (out.length > 24) {
    return 'at most 24 sizes';
  }
  return Array.from(new Set(out)).sort((a, b) => a - b);
}

/**
 * The Scaling tab's state without any DOM: the kernel's probe-able functions, the form, the runs
 * (each a trace group on the chart), polling, cancel. Views listen to `changed`.
 */
export class ScalingModel {
  private _changed = new Signal<this, void>(this);
  private _finished = new Signal<this, IRun>(this);
  private _target: IReviewTarget | null = null;
  private _functions = new Map<string, IProbeFunction[]>();
  private _loading = false;
  private _listError: string | null = null;
  private _runError: string | null = null;
  private _runs: IRun[] = [];
  private _keys = 0;
  private _colorIndex = 0;
  private _poll: number | null = null;
  private _settings: IProbeSettings = {
    target: 400000,
    sizes: [...DEFAULT_SIZES],
    timeBudget: 120,
    memoryBudget: 0.5,
    isolated: false
  };

  selected: string | null = null;
  sizesText = DEFAULT_SIZES.join(', ');
  targetText = '400000';
  device: Device = 'auto';
  checks = false;
  isolated = false;
  /** Milliseconds between polls of a running probe. */
  pollInterval = 500;

  get changed(): ISignal<this, void> {
    return this._changed;
  }
  /** A run ended (done, error or cancelled). */
  get finished(): ISignal<this, IRun> {
    return this._finished;
  }
  get target(): IReviewTarget | null {
    return this._target;
  }
  set target(target: IReviewTarget | null) {
    if (target === this._target) {
      return;
    }
    this._target = target;
    this._listError = null;
    this._runError = null;
    const fns = this.functions;
    if (!fns.some(f => f.name === this.selected)) {
      this.selected = fns.length ? fns[0].name : null;
    }
    this._changed.emit();
  }
  get loading(): boolean {
    return this._loading;
  }
  get listError(): string | null {
    return this._listError;
  }
  get runError(): string | null {
    return this._runError;
  }
  /** Probe-able functions of the current notebook's kernel (harness-like first), as last listed. */
  get functions(): IProbeFunction[] {
    return this._target ? this._functions.get(this._target.path) ?? [] : [];
  }
  /** Runs of the current notebook, oldest first. */
  get runs(): IRun[] {
    const path = this._target?.path;
    return this._runs.filter(r => r.path === path);
  }
  get running(): IRun | null {
    return this.runs.find(r => r.probe.state === 'running') ?? null;
  }
  get latest(): IRun | null {
    const runs = this.runs;
    return runs.length ? runs[runs.length - 1] : null;
  }

  /** Apply the settings (new defaults for the form fields the user has not changed). */
  set settings(s: IProbeSettings) {
    const old = this._settings;
    if (this.sizesText === old.sizes.join(', ')) {
      this.sizesText = s.sizes.join(', ');
    }
    if (this.targetText === String(old.target)) {
      this.targetText = String(s.target);
    }
    if (this.isolated === old.isolated) {
      this.isolated = s.isolated;
    }
    this._settings = { ...s, sizes: [...s.sizes] };
    this._changed.emit();
  }
  get settings(): IProbeSettings {
    return this._settings;
  }

  update(change: Partial<Pick<ScalingModel, 'selected' | 'sizesText' | 'targetText' | 'device' | 'checks' | 'isolated'>>): void {
    Object.assign(this, change);
    this._runError = null;
    this._changed.emit();
  }

  /** Functions whose run would measure code in `fn` (it, or a harness that reaches it). */
  functionsReaching(fn: string): IProbeFunction[] {
    const short = fn.split('.').pop() ?? fn;
    return this.functions.filter(
      f => f.name === fn || (f.calls ?? []).some(c => c === fn || (!fn.includes('.') && c === short))
    );
  }

  /** Ask the kernel which functions can be probed. `quiet`: keep errors to the console (after a review). */
  async refresh(quiet = false): Promise<void> {
    const target = this._target;
    if (!target || this._loading) {
      return;
    }
    this._loading = true;
    if (!quiet) {
      this._listError = null;
    }
    this._changed.emit();
    try {
      await target.ready;
      const reply = await requestAPI<{ functions: IProbeFunction[] }>('functions', {
        method: 'POST',
        body: JSON.stringify({ path: target.path, cells: target.cells() })
      });
      this._functions.set(target.path, reply.functions);
      if (!reply.functions.some(f => f.name === this.selected)) {
        this.selected = reply.functions.length ? reply.functions[0].name : null;
      }
      this._listError = reply.functions.length
        ? null
        : quiet
          ? this._listError
          : "No function of one argument (T) is defined in the notebook's kernel: run the notebook's cells first.";
    } catch (error) {
      if (!quiet) {
        this._listError = explainRequestError(error);
      }
    } finally {
      this._loading = false;
      this._changed.emit();
    }
  }

  /** Start a probe of the selected function with the form's values. */
  async run(forFinding: string | null = null): Promise<IRun | null> {
    const target = this._target;
    if (!target) {
      this._runError = 'Open a notebook first.';
      this._changed.emit();
      return null;
    }
    const fn = this.selected;
    if (!fn) {
      this._runError = 'Pick a function to measure.';
      this._changed.emit();
      return null;
    }
    const sizes = parseSizes(this.sizesText);
    if (typeof sizes === 'string') {
      this._runError = `Sizes: ${sizes}.`;
      this._changed.emit();
      return null;
    }
    const targetSize = Number(this.targetText.replace(/[,_\s]/g, ''));
    if (!Number.isInteger(targetSize) || targetSize <= 0) {
      this._runError = `Target T: "${this.targetText}" is not a positive whole number.`;
      this._changed.emit();
      return null;
    }
    const body: { [key: string]: unknown } = {
      path: target.path,
      cells: target.cells(),
      function: fn,
      sizes,
      target: targetSize,
      device: this.device,
      time_budget: this._settings.timeBudget,
      checks: this.checks,
      isolated: this.isolated
    };
    const budget = this._settings.memoryBudget;
    if (budget > 1) {
      body.budget_bytes = Math.round(budget);
    } else if (budget > 0) {
      body.budget_fraction = budget;
    }
    this._runError = null;
    this._changed.emit();
    let probe: IProbe;
    try {
      probe = await requestAPI<IProbe>('probes', { method: 'POST', body: JSON.stringify(body) });
    } catch (error) {
      this._runError = explainRequestError(error);
      this._changed.emit();
      return null;
    }
    // A function measured again replaces its previous curve (keeping its colour).
    const previous = this._runs.find(r => r.path === target.path && r.function === fn);
    const run: IRun = {
      key: ++this._keys,
      path: target.path,
      function: fn,
      color: previous ? previous.color : RUN_COLORS[this._colorIndex++ % RUN_COLORS.length],
      target: targetSize,
      probe,
      forFinding
    };
    this._runs = this._runs.filter(r => r !== previous).concat([run]);
    this._changed.emit();
    this._schedule();
    return run;
  }

  /** Cancel the running probe (the kernel is interrupted; points measured so far are kept). */
  async cancel(): Promise<void> {
    const run = this.running;
    if (!run) {
      return;
    }
    try {
      const probe = await requestAPI<IProbe>(`probes/${run.probe.id}`, { method: 'DELETE' });
      this._update(run, probe);
    } catch (error) {
      this._runError = explainRequestError(error);
      this._changed.emit();
    }
  }

  /** Forget the current notebook's runs (the chart empties). */
  clear(): void {
    const path = this._target?.path;
    this._runs = this._runs.filter(r => r.path !== path || r.probe.state === 'running');
    this._runError = null;
    this._changed.emit();
  }

  dispose(): void {
    if (this._poll !== null) {
      window.clearTimeout(this._poll);
      this._poll = null;
    }
    Signal.clearData(this);
  }

  private _schedule(): void {
    if (this._poll !== null) {
      return;
    }
    this._poll = window.setTimeout(() => {
      this._poll = null;
      void this._tick();
    }, this.pollInterval);
  }

  private async _tick(): Promise<void> {
    const active = this._runs.filter(r => r.probe.state === 'running');
    await Promise.all(
      active.map(async run => {
        try {
          const probe = await requestAPI<IProbe>(`probes/${run.probe.id}`);
          this._update(run, probe);
        } catch (error) {
          const status = error instanceof RequestError ? error.status : 0;
          if (status === 404) {
            // the server restarted or forgot the probe
            this._update(run, {
              ...run.probe,
              state: 'error',
              error: { kind: 'server', message: 'the server no longer knows this probe (was it restarted?)' }
            });
          }
        }
      })
    );
    if (this._runs.some(r => r.probe.state === 'running')) {
      this._schedule();
    }
  }

  private _update(run: IRun, probe: IProbe): void {
    const wasRunning = run.probe.state === 'running';
    run.probe = probe;
    this._changed.emit();
    if (wasRunning && probe.state !== 'running') {
      this._finished.emit(run);
    }
  }
}
