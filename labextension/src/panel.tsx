import * as React from 'react';

import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';

import { Finding, Severity, STANDARDS, Standard } from './findings.gen';
import { torchReviewIcon } from './icon';
import { ReviewModel, findingKey, locationLabel } from './model';

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

function Row(props: { f: Finding; model: ReviewModel; actions: IPanelActions }): JSX.Element {
  const { f, model, actions } = props;
  const expanded = model.isExpanded(f);
  return (
    <li
      className={`jp-TorchReview-finding jp-TorchReview-sev-${f.severity}` + (expanded ? ' jp-mod-expanded' : '')}
      data-rule={f.rule}
      data-cell={f.cell ?? ''}
      data-line={f.line}
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
        <span className="jp-TorchReview-location">{locationLabel(f)}</span>
      </div>
      {expanded && (
        <div className="jp-TorchReview-details">
          <div className="jp-TorchReview-meta">
            <span className="jp-TorchReview-category">{f.category}</span>
            {f.autofix && <span className="jp-TorchReview-autofix">autofix</span>}
          </div>
          <p>
            <strong>Problem.</strong> <Prose text={f.problem} />
          </p>
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

function Findings(props: { model: ReviewModel; actions: IPanelActions }): JSX.Element {
  const { model, actions } = props;
  const review = model.review;
  if (!model.target) {
    return (
      <div className="jp-TorchReview-empty">
        Open a notebook, then press <b>Review</b>.
      </div>
    );
  }
  if (!review) {
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
      {model.findings.length === 0 && (
        <div className="jp-TorchReview-empty jp-TorchReview-clean">
          No findings under the <b>{review.summary.standard}</b> standard.
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
              <Row key={findingKey(f)} f={f} model={model} actions={actions} />
            ))}
          </ul>
        </section>
      ))}
      {(review.observations ?? []).length > 0 && (
        <section className="jp-TorchReview-observations">
          <h3 className="jp-TorchReview-groupHeader">Positive observations</h3>
          <ul>
            {(review.observations ?? []).map((o, i) => (
              <li key={i}>
                <Prose text={o} />
              </li>
            ))}
          </ul>
        </section>
      )}
      {(review.errors ?? []).length > 0 && (
        <section className="jp-TorchReview-errors">
          <h3 className="jp-TorchReview-groupHeader">Could not analyse</h3>
          <ul>
            {(review.errors ?? []).map((e, i) => (
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

function Body(props: { model: ReviewModel; actions: IPanelActions }): JSX.Element {
  const { model, actions } = props;
  const name = model.target ? model.target.path.split('/').pop() : null;
  return (
    <div className="jp-TorchReview-body" data-status={model.status} data-standard={model.standard}>
      <header className="jp-TorchReview-header">
        <torchReviewIcon.react tag="span" className="jp-TorchReview-headerIcon" />
        <span className="jp-TorchReview-heading">TorchReview</span>
        {name && (
          <span className="jp-TorchReview-notebook" title={model.target?.path}>
            {name}
          </span>
        )}
      </header>
      <Toolbar model={model} actions={actions} />
      {model.review && <SeverityChips model={model} />}
      <Status model={model} actions={actions} />
      <Findings model={model} actions={actions} />
    </div>
  );
}

/** The right-sidebar panel: renders the model, forwards clicks to the plugin's actions. */
export class TorchReviewPanel extends ReactWidget {
  constructor(
    readonly model: ReviewModel,
    private readonly _actions: IPanelActions
  ) {
    super();
    this.addClass('jp-TorchReview');
    this.id = 'torchreview-panel';
    this.title.icon = torchReviewIcon;
    this.title.caption = 'TorchReview';
  }

  protected render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => <Body model={this.model} actions={this._actions} />}
      </UseSignal>
    );
  }
}
