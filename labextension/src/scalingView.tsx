import * as React from 'react';

import { ISignal } from '@lumino/signaling';

import { IFigure, draw, memoryFigure, purge, readTheme, resize, timeFigure } from './chart';
import { fmtBytes, fmtSeconds, fmtSize } from './format';
import { DEVICES, IProbeError, IRun, ScalingModel, verdictOf } from './scaling';

export interface IScalingActions {
  /** Move the notebook's cursor to a cell and line (0-based cell, 1-based line). */
  jumpTo(cell: number, line: number): void;
}

const DEVICE_HELP: Record<string, string> = {
  auto: 'CUDA when the kernel has a GPU, else CPU',
  cpu: 'Measure on the CPU (memory: live tensor storage; device memory: available RAM)',
  cuda: "Measure on the kernel's GPU"
};

/** A plotly chart: redrawn when the figure changes or the theme changes, resized with the panel. */
function Chart(props: {
  className: string;
  figure: (theme: ReturnType<typeof readTheme>) => IFigure;
  version: string;
  themeChanged: ISignal<unknown, unknown> | null;
}): JSX.Element {
  const ref = React.useRef<HTMLDivElement>(null);
  const [themeTick, setThemeTick] = React.useState(0);
  const figure = React.useRef(props.figure);
  figure.current = props.figure;

  React.useEffect(() => {
    const el = ref.current;
    if (!el) {
      return;
    }
    // Read the --jp-* variables from the panel itself at draw time (the theme may just have changed).
    void draw(el, figure.current(readTheme(el))).then(() => {
      el.setAttribute('data-drawn', props.version);
    });
  }, [props.version, themeTick]);

  React.useEffect(() => {
    const signal = props.themeChanged;
    if (!signal) {
      return;
    }
    // The theme's CSS lands a moment after the signal: redraw now and once more shortly after.
    let timer = 0;
    const onTheme = () => {
      setThemeTick(t => t + 1);
      window.clearTimeout(timer);
      timer = window.setTimeout(() => setThemeTick(t => t + 1), 300);
    };
    signal.connect(onTheme);
    return () => {
      signal.disconnect(onTheme);
      window.clearTimeout(timer);
    };
  }, [props.themeChanged]);

  React.useEffect(() => {
    const el = ref.current;
    if (!el || typeof ResizeObserver === 'undefined') {
      return;
    }
    let frame = 0;
    const observer = new ResizeObserver(() => {
      cancelAnimationFrame(frame);
      frame = requestAnimationFrame(() => void resize(el));
    });
    observer.observe(el);
    return () => {
      observer.disconnect();
      cancelAnimationFrame(frame);
      void purge(el);
    };
  }, []);

  return <div ref={ref} className={`jp-TorchReview-chart ${props.className}`} />;
}

function ErrorBox(props: { error: IProbeError; actions: IScalingActions; title?: string }): JSX.Element {
  const { error, actions } = props;
  const where =
    error.cell !== null && error.cell !== undefined
      ? `cell ${error.cell + 1}${error.line ? `, line ${error.line}` : ''}`
      : null;
  return (
    <div className="jp-TorchReview-probeError" role="alert" data-kind={error.kind}>
      {props.title && <strong>{props.title} </strong>}
      <span className="jp-TorchReview-probeErrorText">{error.message}</span>
      {where && (
        <button
          className="jp-TorchReview-linkButton jp-TorchReview-jumpLink"
          title="Go to the code that raised"
          onClick={() => actions.jumpTo(error.cell as number, error.line ?? 1)}
        >
          Go to {where}
        </button>
      )}
      {error.text && <pre className="jp-TorchReview-probeErrorCode">{error.text}</pre>}
    </div>
  );
}

function Progress(props: { run: IRun }): JSX.Element {
  const { run } = props;
  const r = run.probe.result;
  const pts = r && r.points.length ? r.points : run.probe.points;
  const skipped = r?.skipped ?? [];
  const pending = run.probe.state === 'running';
  return (
    <table className="jp-TorchReview-points" data-function={run.function}>
      <thead>
        <tr>
          <th>T</th>
          <th>peak memory</th>
          <th>time</th>
        </tr>
      </thead>
      <tbody>
        {pts.map(p => (
          <tr key={p.size} className="jp-TorchReview-point">
            <td>{fmtSize(p.size)}</td>
            <td>{fmtBytes(p.peak_bytes)}</td>
            <td>{fmtSeconds(p.seconds)}</td>
          </tr>
        ))}
        {skipped.map(s => (
          <tr key={`s${s.size}`} className="jp-TorchReview-skippedRow" title={s.reason}>
            <td>{fmtSize(s.size)}</td>
            <td colSpan={2}>skipped ({s.kind})</td>
          </tr>
        ))}
        {pending && (
          <tr className="jp-TorchReview-pendingRow">
            <td colSpan={3}>
              <span className="jp-TorchReview-spinner" /> measuring…
            </td>
          </tr>
        )}
      </tbody>
    </table>
  );
}

function RunSummary(props: { run: IRun; actions: IScalingActions }): JSX.Element {
  const { run, actions } = props;
  const { probe } = run;
  const r = probe.result;
  const fits = r?.target?.fits;
  const state = probe.state;
  const stateLabel =
    state === 'running'
      ? `measuring… ${probe.elapsed.toFixed(1)} s`
      : state === 'done'
        ? `done in ${probe.elapsed.toFixed(1)} s`
        : state;
  return (
    <section className="jp-TorchReview-run" data-function={run.function} data-state={state}>
      <div className="jp-TorchReview-runHeader">
        <span className="jp-TorchReview-swatch" style={{ background: run.color }} />
        <code className="jp-TorchReview-runName">{run.function}</code>
        <span className="jp-TorchReview-runState">{stateLabel}</span>
      </div>
      {r && (
        <p
          className={
            'jp-TorchReview-verdict' +
            (fits === false ? ' jp-mod-nofit' : fits === true ? ' jp-mod-fits' : '')
          }
        >
          {verdictOf(r)}
        </p>
      )}
      <Progress run={run} />
      {probe.error && <ErrorBox error={probe.error} actions={actions} title={titleFor(probe.error)} />}
      {r?.harness_error && !probe.error && (
        <ErrorBox error={r.harness_error} actions={actions} title="The harness raised:" />
      )}
      {r && (r.skipped.length > 0 || r.warnings.length > 0 || probe.notes.length > 0) && (
        <ul className="jp-TorchReview-notes">
          {r.skipped.map(s => (
            <li key={`s${s.size}`} className="jp-TorchReview-skipped">
              skipped T={fmtSize(s.size)}: {s.reason}
            </li>
          ))}
          {r.warnings.map((w, i) => (
            <li key={`w${i}`} className="jp-TorchReview-warning">
              {w}
            </li>
          ))}
          {probe.notes.map((n, i) => (
            <li key={`n${i}`} className="jp-TorchReview-note">
              {n}
            </li>
          ))}
        </ul>
      )}
      {state === 'done' && probe.findings.length > 0 && (
        <div className="jp-TorchReview-runFindings">
          {probe.findings.length} {probe.findings.length === 1 ? 'finding' : 'findings'} added to the
          Findings tab.
        </div>
      )}
    </section>
  );
}

function titleFor(error: IProbeError): string {
  switch (error.kind) {
    case 'harness':
      return 'The harness raised:';
    case 'not-importable':
      return 'Not importable:';
    case 'timeout':
      return 'Timed out:';
    case 'definitions':
      return 'Isolated kernel:';
    default:
      return 'Probe failed:';
  }
}

export function ScalingView(props: {
  model: ScalingModel;
  actions: IScalingActions;
  themeChanged: ISignal<unknown, unknown> | null;
}): JSX.Element {
  const { model, actions } = props;
  const fns = model.functions;
  const selected = fns.find(f => f.name === model.selected) ?? null;
  const running = model.running;
  const runs = model.runs;
  // A cheap fingerprint of what the charts show: redraw only when it changes.
  const version = runs
    .map(r => `${r.key}:${r.probe.state}:${r.probe.points.length}:${r.probe.result ? 1 : 0}`)
    .join('|');

  if (!model.target) {
    return <div className="jp-TorchReview-empty">Open a notebook to measure how its code scales.</div>;
  }
  return (
    <div className="jp-TorchReview-scaling" data-running={running ? 'true' : 'false'}>
      <div className="jp-TorchReview-form">
        <label className="jp-TorchReview-field jp-TorchReview-fieldWide">
          <span>Function</span>
          <div className="jp-TorchReview-pickRow">
            <select
              className="jp-TorchReview-function"
              value={model.selected ?? ''}
              disabled={!fns.length}
              onChange={e => model.update({ selected: e.target.value })}
              title={selected ? selected.doc || selected.signature : 'Run the notebook, then list its functions'}
            >
              {!fns.length && <option value="">(no functions listed)</option>}
              {fns.map(f => (
                <option key={f.name} value={f.name}>
                  {f.signature}
                </option>
              ))}
            </select>
            <button
              className="jp-TorchReview-iconButton jp-TorchReview-refresh"
              title="List the functions defined in the notebook's kernel"
              disabled={model.loading}
              onClick={() => void model.refresh()}
            >
              {model.loading ? '…' : '↻'}
            </button>
          </div>
          {selected?.doc && <small className="jp-TorchReview-doc">{selected.doc}</small>}
        </label>
        <label className="jp-TorchReview-field">
          <span>Sizes T</span>
          <input
            className="jp-TorchReview-sizes"
            type="text"
            spellCheck={false}
            value={model.sizesText}
            onChange={e => model.update({ sizesText: e.target.value })}
            title="The sizes to measure, smallest first (a geometric grid fits best)"
          />
        </label>
        <label className="jp-TorchReview-field">
          <span>Target T</span>
          <input
            className="jp-TorchReview-target"
            type="text"
            spellCheck={false}
            value={model.targetText}
            onChange={e => model.update({ targetText: e.target.value })}
            title="The size the code must scale to: the fits are carried out to it"
          />
        </label>
        <div className="jp-TorchReview-field">
          <span>Device</span>
          <div className="jp-TorchReview-standard jp-TorchReview-device" role="radiogroup" aria-label="Device">
            {DEVICES.map(d => (
              <button
                key={d}
                role="radio"
                aria-checked={model.device === d}
                className={'jp-TorchReview-standardOption' + (model.device === d ? ' jp-mod-selected' : '')}
                title={DEVICE_HELP[d]}
                onClick={() => model.update({ device: d })}
              >
                {d}
              </button>
            ))}
          </div>
        </div>
        <div className="jp-TorchReview-checks">
          <label title="Also run the runtime checks: devices, host syncs, gradients, NaN/Inf, graph breaks, leaks">
            <input
              type="checkbox"
              className="jp-TorchReview-checksBox"
              checked={model.checks}
              onChange={e => model.update({ checks: e.target.checked })}
            />
            Runtime checks
          </label>
          <label title="Run in a scratch kernel that re-runs the notebook's definitions only (your kernel is not touched)">
            <input
              type="checkbox"
              className="jp-TorchReview-isolatedBox"
              checked={model.isolated}
              onChange={e => model.update({ isolated: e.target.checked })}
            />
            Isolated (scratch kernel)
          </label>
        </div>
        <div className="jp-TorchReview-actions">
          <button
            className="jp-TorchReview-runButton jp-mod-styled jp-mod-accept"
            disabled={!!running || !model.selected}
            onClick={() => void model.run()}
            title="Measure peak memory and time at each size in the notebook's kernel"
          >
            {running ? 'Running…' : 'Run'}
          </button>
          <button
            className="jp-TorchReview-cancelButton jp-mod-styled"
            disabled={!running}
            onClick={() => void model.cancel()}
            title="Interrupt the kernel; sizes measured so far are kept"
          >
            Cancel
          </button>
          <button
            className="jp-TorchReview-linkButton jp-TorchReview-clearButton"
            disabled={!runs.length || (runs.length === 1 && !!running)}
            onClick={() => model.clear()}
            title="Remove every curve from the chart"
          >
            Clear
          </button>
        </div>
      </div>
      {model.listError && (
        <div className="jp-TorchReview-status jp-mod-error" role="alert">
          {model.listError}
        </div>
      )}
      {model.runError && (
        <div className="jp-TorchReview-status jp-mod-error" role="alert">
          {model.runError}
        </div>
      )}
      {runs.length > 0 ? (
        <>
          <Chart
            className="jp-TorchReview-chart-memory"
            version={version}
            figure={theme => memoryFigure(runs, theme)}
            themeChanged={props.themeChanged}
          />
          <Chart
            className="jp-TorchReview-chart-time"
            version={version}
            figure={theme => timeFigure(runs, theme)}
            themeChanged={props.themeChanged}
          />
        </>
      ) : (
        !model.listError &&
        !model.runError && (
          <div className="jp-TorchReview-empty">
            Pick a function that takes the size <b>T</b>, then press <b>Run</b>: the panel measures
            peak memory and time at each size in the notebook's kernel and carries the fitted law out
            to the target.
          </div>
        )
      )}
      {[...runs].reverse().map(run => (
        <RunSummary key={run.key} run={run} actions={actions} />
      ))}
    </div>
  );
}
