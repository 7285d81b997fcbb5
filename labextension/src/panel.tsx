import * as React from 'react';

import { ReactWidget } from '@jupyterlab/ui-components';
import { ISignal } from '@lumino/signaling';

import { Finding, Severity, STANDARDS, Standard } from './findings.gen';
import { bigO, fmtBytes, fmtSize } from './format';
import { torchReviewIcon } from './icon';
import { PanelTab, ReviewModel, findingKey, locationLabel } from './model';
import { IProbeFunction, IRun, ScalingModel, measuredLine } from './scaling';
import { ScalingView } from './scalingView';

const SEVERITY_LABEL: Record<Severity, string> = {
  critical: 'Critical',
  high: 'High',
  medium: 'Medium',
  low: 'Low'
};

const STANDARD_HELP: Record<Standard, string> = {
  research: 'Correctness, numerics, memory, devices, gradients',
  production:
    'Research checks plus error handling, validation, observability, API, docs, types, tests'
};

export interface IPanelActions {
  /** Review the current notebook (with the model's standard). */
  review(): void;
  /** Move the notebook's cursor to the finding. */
  jump(f: Finding): void;
  /** Save the review as Markdown next to the notebook and open it. */
  exportMarkdown(): void;
  /** Measure how `fn` scales (from a static finding's "Measure scaling"). */
  measure(f: Finding, fn: IProbeFunction): void;
  /** Move the notebook's cursor to a cell (0-based) and line (1-based). */
  jumpTo(cell: number, line: number): void;
}

/** Categories whose findings a scaling probe can confirm or refute. */
const MEASURABLE = new Set(['memory-complexity', 'scaling']);

/** The function a static finding sits in (`evidence.function`), when it has one. */
function findingFunction(f: Finding): string | null {
  const fn = f.evidence?.['function'];
  return typeof fn === 'string' && fn ? fn : null;
}

/** The evidence a probe finding carries, in words: exponent, bytes at the target, device memory. */
function Evidence(props: { f: Finding }): JSX.Element | null {
  const ev = props.f.evidence;
  if (!ev) {
    return null;
  }
  const num = (k: string) => (typeof ev[k] === 'number' ? (ev[k] as number) : null);
  const items: [string, string][] = [];
  const exponent = num('exponent');
  if (exponent !== null) {
    const r2 = num('r2');
    items.push(['memory law', `${bigO(exponent)} (exponent ${exponent.toFixed(2)}${r2 !== null ? `, R² ${r2.toFixed(3)}` : ''})`]);
  }
  const predicted = num('predicted_bytes');
  if (predicted !== null) {
    const sizes = Array.isArray(ev['sizes']) ? (ev['sizes'] as number[]) : [];
    items.push(['at the target', `${fmtBytes(predicted)}${sizes.length ? ` (fitted over T=${sizes.map(s => fmtSize(s)).join(', ')})` : ''}`]);
  }
  const meta = num('meta_peak_bytes');
  if (meta !== null) {
    const from = Array.isArray(ev['meta_from_sizes']) ? (ev['meta_from_sizes'] as number[]) : [];
    items.push(from.length
      ? ['meta-device runs', `${fmtBytes(meta)} (extrapolated from T ≤ ${fmtSize(Math.max(...from))})`]
      : ['meta-device run', fmtBytes(meta)]);
  }
  const device = num('device_bytes');
  if (device !== null) {
    items.push(['device memory', fmtBytes(device)]);
  }
  const fits = num('max_size_that_fits');
  if (fits !== null) {
    items.push(['largest T that fits', `≈ ${fmtSize(fits, true)}`]);
  }
  const size = num('size');
  if (size !== null && items.length === 0) {
    items.push(['size', fmtSize(size)]);
  }
  const shown = ['exponent', 'r2', 'predicted_bytes', 'meta_peak_bytes', 'device_bytes', 'max_size_that_fits', 'size'];
  for (const [k, v] of Object.entries(ev)) {
    if (shown.includes(k) || ['source', 'function', 'sizes', 'peak_bytes'].includes(k)) {
      continue;
    }
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') {
      items.push([k.replace(/_/g, ' '), String(v)]);
    }
  }
  if (!items.length) {
    return null;
  }
  return (
    <dl className="jp-TorchReview-evidence">
      {items.map(([k, v]) => (
        <React.Fragment key={k}>
          <dt>{k}</dt>
          <dd>{v}</dd>
        </React.Fragment>
      ))}
    </dl>
  );
}

/** Text with `backticked` spans shown as inline code (the engine's messages use them). */
function Prose(props: { text: string }): JSX.Element {
  const parts = props.text.split('`');
  return (
    <>
      {parts.map((part, i) =>
        i % 2 === 1 && i < parts.length - 1 ? <code key={i}>{part}</code> : <React.Fragment key={i}>{part}</React.Fragment>
      )}
    </>
  );
}

function titleCase(s: string): string {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function Toolbar(props: { model: ReviewModel; actions: IPanelActions }): JSX.Element {
  const { model, actions } = props;
  const running = model.status === 'running';
  return (
    <div className="jp-TorchReview-toolbar">
      <button
        className="jp-TorchReview-reviewButton jp-mod-styled jp-mod-accept"
        onClick={() => actions.review()}
        disabled={running || !model.target}
        title="Review the notebook's current content (unsaved edits included)"
      >
        {running ? 'Reviewing…' : model.review ? 'Review again' : 'Review'}
      </button>
      <div className="jp-TorchReview-standard" role="radiogroup" aria-label="Review standard">
        {STANDARDS.map(s => (
          <button
            key={s}
            role="radio"
            aria-checked={model.standard === s}
            className={
              'jp-TorchReview-standardOption' + (model.standard === s ? ' jp-mod-selected' : '')
            }
            title={STANDARD_HELP[s]}
            disabled={running}
            onClick={() => void model.setStandard(s)}
          >
            {titleCase(s)}
          </button>
        ))}
      </div>
    </div>
  );
}

function SeverityChips(props: { model: ReviewModel }): JSX.Element {
  const { model } = props;
  return (
    <div className="jp-TorchReview-chips">
      {model.groups.map(g => (
        <button
          key={g.severity}
          className={
            `jp-TorchReview-chip jp-TorchReview-sev-${g.severity}` +
            (model.isHidden(g.severity) ? ' jp-mod-off' : '') +
            (g.findings.length === 0 ? ' jp-mod-empty' : '')
          }
          aria-pressed={!model.isHidden(g.severity)}
          title={`${model.isHidden(g.severity) ? 'Show' : 'Hide'} ${SEVERITY_LABEL[g.severity].toLowerCase()} findings`}
          onClick={() => model.toggleSeverity(g.severity)}
        >
          <span className="jp-TorchReview-chipCount">{g.findings.length}</span>
          <span className="jp-TorchReview-chipLabel">{SEVERITY_LABEL[g.severity]}</span>
        </button>
      ))}
    </div>
  );
}

function Code(props: { label: string; code: string; kind: string }): JSX.Element {
  return (
    <div className={`jp-TorchReview-code jp-TorchReview-code-${props.kind}`}>
      <div className="jp-TorchReview-codeLabel">{props.label}</div>
      <pre>{props.code}</pre>
    </div>
  );
}

/** What probes say about a static finding: functions that reach its code, and the latest run of one. */
function measurement(f: Finding, model: ReviewModel, scaling: ScalingModel): { fns: IProbeFunction[]; run: IRun | null } {
  const fn = findingFunction(f);
  if (model.isDynamic(f) || !fn || !MEASURABLE.has(f.category)) {
    return { fns: [], run: null };
  }
  const fns = scaling.functionsReaching(fn);
  const names = new Set(fns.map(g => g.name));
  const key = findingKey(f);
  const runs = scaling.runs.filter(r => names.has(r.function) || r.forFinding === key);
  const own = runs.filter(r => r.forFinding === key);
  const run = (own.length ? own : runs).slice(-1)[0] ?? null;
  return { fns, run };
}

function Row(props: { f: Finding; model: ReviewModel; scaling: ScalingModel; actions: IPanelActions }): JSX.Element {
  const { f, model, scaling, actions } = props;
  const expanded = model.isExpanded(f);
  const dynamic = model.isDynamic(f);
  const { fns, run } = measurement(f, model, scaling);
  const measured = run ? measuredLine(run) : null;
  const fits = run?.probe.result?.target?.fits;
  return (
    <li
      className={
        `jp-TorchReview-finding jp-TorchReview-sev-${f.severity}` +
        (expanded ? ' jp-mod-expanded' : '') +
        (dynamic ? ' jp-mod-dynamic' : '')
      }
      data-rule={f.rule}
      data-cell={f.cell ?? ''}
      data-line={f.line}
      data-dynamic={dynamic ? 'true' : undefined}
    >
      <div
        className="jp-TorchReview-row"
        role="button"
        tabIndex={0}
        title={`${f.problem}\n\nClick to go to ${locationLabel(f)}`}
        onClick={() => {
          model.setExpanded(f, true);
          actions.jump(f);
        }}
        onKeyDown={e => {
          if (e.key === 'Enter' || e.key === ' ') {
            e.preventDefault();
            model.setExpanded(f, true);
            actions.jump(f);
          }
        }}
      >
        <button
          className="jp-TorchReview-twisty"
          aria-label={expanded ? 'Hide details' : 'Show details'}
          aria-expanded={expanded}
          onClick={e => {
            e.stopPropagation();
            model.setExpanded(f, !expanded);
          }}
        >
          {expanded ? '▾' : '▸'}
        </button>
        <span className="jp-TorchReview-rule">{f.rule}</span>
        <span className="jp-TorchReview-title">
          <Prose text={f.title} />
        </span>
        <span className="jp-TorchReview-location">
          {dynamic && <span className="jp-TorchReview-measuredTag">measured</span>}
          {f.cell === null && f.line <= 1 && dynamic ? 'from a probe' : locationLabel(f)}
        </span>
      </div>
      {(measured || fns.length > 0) && (
        <div className="jp-TorchReview-measure">
          {measured && (
            <span
              className={
                'jp-TorchReview-measured' + (fits === false ? ' jp-mod-nofit' : fits === true ? ' jp-mod-fits' : '')
              }
              data-state={run?.probe.state}
            >
              {measured}
            </span>
          )}
          {fns.length > 0 && run?.probe.state !== 'running' && (
            <button
              className="jp-TorchReview-linkButton jp-TorchReview-measureButton"
              title={`Run ${fns[0].name} at several sizes and fit memory and time against T`}
              disabled={!!scaling.running}
              onClick={e => {
                e.stopPropagation();
                actions.measure(f, fns[0]);
              }}
            >
              {run ? 'Measure again' : 'Measure scaling'}
            </button>
          )}
        </div>
      )}
      {expanded && (
        <div className="jp-TorchReview-details">
          <div className="jp-TorchReview-meta">
            <span className="jp-TorchReview-category">{f.category}</span>
            {f.autofix && <span className="jp-TorchReview-autofix">autofix</span>}
          </div>
          <p>
            <strong>Problem.</strong> <Prose text={f.problem} />
          </p>
          {dynamic && <Evidence f={f} />}
          {f.impact && (
            <p>
              <strong>Impact.</strong> <Prose text={f.impact} />
            </p>
          )}
          {f.fix && (
            <div className="jp-TorchReview-fix">
              <Code label="Before" code={f.fix.before} kind="before" />
              <Code label="After" code={f.fix.after} kind="after" />
            </div>
          )}
        </div>
      )}
    </li>
  );
}

function Findings(props: { model: ReviewModel; scaling: ScalingModel; actions: IPanelActions }): JSX.Element {
  const { model, scaling, actions } = props;
  const review = model.review;
  const probes = model.probeFindings.length > 0;
  if (!model.target) {
    return (
      <div className="jp-TorchReview-empty">
        Open a notebook, then press <b>Review</b>.
      </div>
    );
  }
  if (!review && !probes) {
    return model.status === 'running' ? (
      <div className="jp-TorchReview-empty">Reviewing…</div>
    ) : (
      <div className="jp-TorchReview-empty">
        Press <b>Review</b> to check this notebook against the <b>{model.standard}</b> standard.
      </div>
    );
  }
  const shown = model.groups.filter(g => g.findings.length > 0 && !model.isHidden(g.severity));
  return (
    <div className="jp-TorchReview-results">
      {review && model.findings.length === 0 && (
        <div className="jp-TorchReview-empty jp-TorchReview-clean">
          No findings under the <b>{review.summary.standard}</b> standard.
        </div>
      )}
      {!review && (
        <div className="jp-TorchReview-empty">
          Measured findings below; press <b>Review</b> for the static review too.
        </div>
      )}
      {shown.map(g => (
        <section key={g.severity} className={`jp-TorchReview-group jp-TorchReview-sev-${g.severity}`}>
          <h3 className="jp-TorchReview-groupHeader">
            <span className="jp-TorchReview-dot" />
            {SEVERITY_LABEL[g.severity]}
            <span className="jp-TorchReview-groupCount">{g.findings.length}</span>
          </h3>
          <ul>
            {g.findings.map(f => (
              <Row key={findingKey(f)} f={f} model={model} scaling={scaling} actions={actions} />
            ))}
          </ul>
        </section>
      ))}
      {(review?.observations ?? []).length > 0 && (
        <section className="jp-TorchReview-observations">
          <h3 className="jp-TorchReview-groupHeader">Positive observations</h3>
          <ul>
            {(review?.observations ?? []).map((o, i) => (
              <li key={i}>
                <Prose text={o} />
              </li>
            ))}
          </ul>
        </section>
      )}
      {(review?.errors ?? []).length > 0 && (
        <section className="jp-TorchReview-errors">
          <h3 className="jp-TorchReview-groupHeader">Could not analyse</h3>
          <ul>
            {(review?.errors ?? []).map((e, i) => (
              <li key={i}>{e}</li>
            ))}
          </ul>
        </section>
      )}
    </div>
  );
}

function Status(props: { model: ReviewModel; actions: IPanelActions }): JSX.Element | null {
  const { model, actions } = props;
  if (model.status === 'error') {
    return (
      <div className="jp-TorchReview-status jp-mod-error" role="alert">
        {model.error}
      </div>
    );
  }
  const review = model.review;
  if (!review) {
    return null;
  }
  const n = model.findings.length;
  const at = model.reviewedAt
    ? ` · ${model.reviewedAt.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}`
    : '';
  return (
    <div className="jp-TorchReview-status" data-status={model.status}>
      <span className="jp-TorchReview-statusText">
        {n} {n === 1 ? 'finding' : 'findings'} · {review.summary.standard} standard{at}
      </span>
      <button
        className="jp-TorchReview-linkButton"
        title="Save this review as Markdown next to the notebook"
        onClick={() => actions.exportMarkdown()}
      >
        Export Markdown
      </button>
    </div>
  );
}

const TABS: { id: PanelTab; label: string; help: string }[] = [
  { id: 'findings', label: 'Findings', help: 'What the review (and the probes) found' },
  { id: 'scaling', label: 'Scaling', help: "Measure memory and time against T in the notebook's kernel" }
];

function Tabs(props: { model: ReviewModel; scaling: ScalingModel }): JSX.Element {
  const { model, scaling } = props;
  const n = model.findings.length;
  const running = scaling.running;
  return (
    <div className="jp-TorchReview-tabs" role="tablist">
      {TABS.map(t => (
        <button
          key={t.id}
          role="tab"
          aria-selected={model.tab === t.id}
          className={`jp-TorchReview-tab jp-TorchReview-tab-${t.id}` + (model.tab === t.id ? ' jp-mod-selected' : '')}
          title={t.help}
          onClick={() => {
            model.tab = t.id;
            if (t.id === 'scaling' && !scaling.functions.length) {
              void scaling.refresh();
            }
          }}
        >
          {t.label}
          {t.id === 'findings' && (model.review || n > 0) && <span className="jp-TorchReview-tabCount">{n}</span>}
          {t.id === 'scaling' && running && <span className="jp-TorchReview-spinner" title="a probe is running" />}
        </button>
      ))}
    </div>
  );
}

function Body(props: {
  model: ReviewModel;
  scaling: ScalingModel;
  actions: IPanelActions;
  themeChanged: ISignal<unknown, unknown> | null;
}): JSX.Element {
  const { model, scaling, actions } = props;
  const name = model.target ? model.target.path.split('/').pop() : null;
  return (
    <div
      className="jp-TorchReview-body"
      data-status={model.status}
      data-standard={model.standard}
      data-tab={model.tab}
    >
      <header className="jp-TorchReview-header">
        <torchReviewIcon.react tag="span" className="jp-TorchReview-headerIcon" />
        <span className="jp-TorchReview-heading">TorchReview</span>
        {name && (
          <span className="jp-TorchReview-notebook" title={model.target?.path}>
            {name}
          </span>
        )}
      </header>
      <Tabs model={model} scaling={scaling} />
      {model.tab === 'findings' ? (
        <>
          <Toolbar model={model} actions={actions} />
          {(model.review || model.probeFindings.length > 0) && <SeverityChips model={model} />}
          <Status model={model} actions={actions} />
          <Findings model={model} scaling={scaling} actions={actions} />
        </>
      ) : (
        <ScalingView model={scaling} actions={actions} themeChanged={props.themeChanged} />
      )}
    </div>
  );
}

/** The right-sidebar panel: renders the model, forwards clicks to the plugin's actions. */
export class TorchReviewPanel extends ReactWidget {
  constructor(
    readonly model: ReviewModel,
    readonly scaling: ScalingModel,
    private readonly _actions: IPanelActions,
    private readonly _themeChanged: ISignal<unknown, unknown> | null = null
  ) {
    super();
    this.addClass('jp-TorchReview');
    this.id = 'torchreview-panel';
    this.title.icon = torchReviewIcon;
    this.title.caption = 'TorchReview';
    model.changed.connect(this.update, this);
    scaling.changed.connect(this.update, this);
  }

  protected render(): JSX.Element {
    return (
      <Body model={this.model} scaling={this.scaling} actions={this._actions} themeChanged={this._themeChanged} />
    );
  }
}
