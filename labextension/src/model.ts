import { ISignal, Signal } from '@lumino/signaling';

import { requestAPI } from './request';
import {
  Finding,
  Review,
  SEVERITIES,
  Severity,
  Standard
} from './findings.gen';

/** A notebook cell as the server expects it (nbformat-style). */
export interface ICellPayload {
  cell_type: string;
  source: string;
  id?: string;
  execution_count?: number | null;
}

/** What the model needs from the notebook it reviews: a name, and its current cells. */
export interface IReviewTarget {
  /** The notebook's path relative to the server root (a stable key). */
  readonly path: string;
  /** Resolves once the notebook's content has loaded. */
  readonly ready: Promise<void>;
  /** The notebook's current content, unsaved edits included. */
  cells(): ICellPayload[];
  /** The kernel language, when known. */
  language(): string | null;
}

export type ReviewStatus = 'idle' | 'running' | 'done' | 'error';

/** The panel's two views. */
export type PanelTab = 'findings' | 'scaling';

export interface ISeverityGroup {
  severity: Severity;
  findings: Finding[];
}

/**
 * The panel's state without any DOM: the target notebook, the standard, the last review of each
 * notebook, the severity filter and which rows are expanded. Views listen to `changed`.
 */
export class ReviewModel {
  private _changed = new Signal<this, void>(this);
  private _target: IReviewTarget | null = null;
  private _standard: Standard = 'research';
  private _ignored: string[] = [];
  private _select: string[] = [];
  private _severity: { [code: string]: string } = {};
  private _reviews = new Map<string, Review>();
  private _status: ReviewStatus = 'idle';
  private _error: string | null = null;
  private _hidden = new Set<Severity>();
  private _expanded = new Set<string>();
  private _generation = 0;
  private _reviewedAt: Date | null = null;
  private _tab: PanelTab = 'findings';
  // Findings of scaling probes and runtime checks: notebook path -> probed function -> findings.
  private _probeFindings = new Map<string, Map<string, Finding[]>>();
  private _dynamic = new WeakSet<Finding>();

  get changed(): ISignal<this, void> {
    return this._changed;
  }
  get target(): IReviewTarget | null {
    return this._target;
  }
  get standard(): Standard {
    return this._standard;
  }
  get status(): ReviewStatus {
    return this._status;
  }
  get error(): string | null {
    return this._error;
  }
  get ignoredRules(): readonly string[] {
    return this._ignored;
  }
  get reviewedAt(): Date | null {
    return this._reviewedAt;
  }

  /** The last review of the current notebook (null before the first one). */
  get review(): Review | null {
    return this._target ? this._reviews.get(this._target.path) ?? null : null;
  }

  get tab(): PanelTab {
    return this._tab;
  }
  set tab(tab: PanelTab) {
    if (tab !== this._tab) {
      this._tab = tab;
      this._changed.emit();
    }
  }

  /** The findings shown: the current review's and the probes', less ignored rules. */
  get findings(): Finding[] {
    const review = this.review;
    const all = [...(review ? review.findings : []), ...this.probeFindings];
    return all.filter(f => !this.isIgnored(f.rule));
  }

  /** Findings from the current notebook's probes (measured memory, runtime checks). */
  get probeFindings(): Finding[] {
    const byFunction = this._target ? this._probeFindings.get(this._target.path) : undefined;
    if (!byFunction) {
      return [];
    }
    const out: Finding[] = [];
    const seen = new Set<string>();
    for (const list of byFunction.values()) {
      for (const f of list) {
        const key = findingKey(f);
        if (!seen.has(key)) {
          seen.add(key);
          out.push(f);
        }
      }
    }
    return out;
  }

  /** Replace the findings a probe of `fn` produced for the notebook at `path`. */
  setProbeFindings(path: string, fn: string, findings: Finding[]): void {
    let byFunction = this._probeFindings.get(path);
    if (!byFunction) {
      byFunction = new Map();
      this._probeFindings.set(path, byFunction);
    }
    for (const f of findings) {
      this._dynamic.add(f);
    }
    byFunction.set(fn, findings);
    this._changed.emit();
  }

  /** Whether a finding came from running the code (a probe) rather than from reading it. */
  isDynamic(f: Finding): boolean {
    return this._dynamic.has(f);
  }

  /** Findings by severity, most severe first; every severity is present (maybe empty). */
  get groups(): ISeverityGroup[] {
    const all = this.findings;
    return SEVERITIES.map(severity => ({
      severity,
      findings: all.filter(f => f.severity === severity)
    }));
  }

  count(severity: Severity): number {
    return this.findings.filter(f => f.severity === severity).length;
  }

  isHidden(severity: Severity): boolean {
    return this._hidden.has(severity);
  }

  toggleSeverity(severity: Severity): void {
    if (this._hidden.has(severity)) {
      this._hidden.delete(severity);
    } else {
      this._hidden.add(severity);
    }
    this._changed.emit();
  }

  isExpanded(f: Finding): boolean {
    return this._expanded.has(findingKey(f));
  }

  setExpanded(f: Finding, expanded: boolean): void {
    const key = findingKey(f);
    if (expanded === this._expanded.has(key)) {
      return;
    }
    if (expanded) {
      this._expanded.add(key);
    } else {
      this._expanded.delete(key);
    }
    this._changed.emit();
  }

  isIgnored(rule: string): boolean {
    const code = rule.toUpperCase();
    return this._ignored.some(prefix => code.startsWith(prefix.toUpperCase()));
  }

  set ignoredRules(codes: readonly string[]) {
    this._ignored = [...codes];
    this._changed.emit();
  }

  /** Rule selection and severity overrides sent with every review (the engine applies them). */
  set ruleOptions(options: { select: readonly string[]; severity: { [code: string]: string } }) {
    this._select = [...options.select];
    this._severity = { ...options.severity };
  }

  set target(target: IReviewTarget | null) {
    if (target === this._target) {
      return;
    }
    this._target = target;
    this._generation++; // a review in flight for the old notebook is dropped
    this._status = target && this._reviews.has(target.path) ? 'done' : 'idle';
    this._error = null;
    this._changed.emit();
  }

  /** Change the standard; re-review when the notebook was reviewed before. */
  async setStandard(standard: Standard): Promise<void> {
    if (standard === this._standard) {
      return;
    }
    this._standard = standard;
    this._changed.emit();
    if (this.review || this._status === 'error') {
      await this.run();
    }
  }

  /** Set the standard without re-reviewing (from settings). */
  set defaultStandard(standard: Standard) {
    this._standard = standard;
    this._changed.emit();
  }

  /** The review of the target's current content as the Markdown report reviewers expect. */
  async markdown(): Promise<string> {
    const target = this._target;
    if (!target) {
      throw new Error('Open a notebook to review it.');
    }
    await target.ready;
    const reply = await requestAPI<Review & { markdown: string }>('review', {
      method: 'POST',
      body: JSON.stringify({ ...this._payload(target), format: 'markdown' })
    });
    return reply.markdown;
  }

  private _payload(target: IReviewTarget): { [key: string]: unknown } {
    return {
      path: target.path,
      cells: target.cells(),
      language: target.language(),
      standard: this._standard,
      ignore: this._ignored,
      select: this._select,
      severity: this._severity
    };
  }

  /** Review the target's current content with the current standard. */
  async run(): Promise<void> {
    const target = this._target;
    if (!target) {
      this._status = 'error';
      this._error = 'Open a notebook to review it.';
      this._changed.emit();
      return;
    }
    const generation = ++this._generation;
    this._status = 'running';
    this._error = null;
    this._changed.emit();
    try {
      await target.ready;
      const review = await requestAPI<Review>('review', {
        method: 'POST',
        body: JSON.stringify(this._payload(target))
      });
      if (generation !== this._generation) {
        return; // superseded by a newer review or another notebook
      }
      this._reviews.set(target.path, review);
      this._status = 'done';
      this._reviewedAt = new Date();
    } catch (error) {
      if (generation !== this._generation) {
        return;
      }
      this._status = 'error';
      this._error = error instanceof Error ? error.message : String(error);
    }
    this._changed.emit();
  }
}

/** A stable key for a finding (expanded state survives re-reviews of the same code). */
export function findingKey(f: Finding): string {
  return `${f.rule}:${f.cell_id ?? f.cell}:${f.line}:${f.column}`;
}

/** "cell 3 [In 7], line 4": cells 1-based for people, as jupyterlab-lsp writes them. */
export function locationLabel(f: Finding): string {
  if (f.cell === null) {
    return `line ${f.line}`;
  }
  const count = f.execution_count !== null ? ` [In ${f.execution_count}]` : '';
  return `cell ${f.cell + 1}${count}, line ${f.line}`;
}
