import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, IThemeManager, showErrorMessage } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { Finding, Standard, STANDARDS } from './findings.gen';
import { torchReviewIcon } from './icon';
import { jumpToFinding } from './jump';
import { ICellPayload, IReviewTarget, ReviewModel, findingKey } from './model';
import { TorchReviewPanel } from './panel';
import { DEFAULT_SIZES, ScalingModel } from './scaling';

const PLUGIN_ID = 'torchreview-lab:plugin';

export namespace CommandIDs {
  export const review = 'torchreview:review';
  export const open = 'torchreview:open';
  export const toggleStandard = 'torchreview:toggle-standard';
  export const exportMarkdown = 'torchreview:export-markdown';
  export const scaling = 'torchreview:scaling';
}

/** The notebook as the model sees it: its path and its live cells (unsaved edits included). */
function notebookTarget(panel: NotebookPanel): IReviewTarget {
  return {
    get path() {
      return panel.context.path;
    },
    get ready() {
      return panel.context.ready;
    },
    cells(): ICellPayload[] {
      const cells = panel.content.model?.cells;
      const out: ICellPayload[] = [];
      if (!cells) {
        return out;
      }
      for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        const payload: ICellPayload = {
          cell_type: cell.type,
          source: cell.sharedModel.getSource(),
          id: cell.id
        };
        if (cell.type === 'code') {
          payload.execution_count = (cell as any).executionCount ?? null;
        }
        out.push(payload);
      }
      return out;
    },
    language(): string | null {
      const model = panel.content.model;
      if (!model) {
        return null;
      }
      const info = model.getMetadata('language_info') as { name?: string } | undefined;
      const spec = model.getMetadata('kernelspec') as { language?: string } | undefined;
      return info?.name || spec?.language || null; // '' until a kernel reports it
    }
  };
}

interface ISettings {
  standard: Standard;
  autoReviewOnSave: boolean;
  ignoredRules: string[];
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Review PyTorch code in notebooks from a side panel.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ISettingRegistry, ILayoutRestorer, IThemeManager],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null,
    themeManager: IThemeManager | null
  ) => {
    const model = new ReviewModel();
    const scaling = new ScalingModel();
    const settings: ISettings = { standard: 'research', autoReviewOnSave: false, ignoredRules: [] };
    const targets = new WeakMap<NotebookPanel, IReviewTarget>();
    const targetFor = (nb: NotebookPanel): IReviewTarget => {
      let t = targets.get(nb);
      if (!t) {
        t = notebookTarget(nb);
        targets.set(nb, t);
      }
      return t;
    };
    const follow = () => {
      const nb = tracker.currentWidget;
      if (nb) {
        model.target = targetFor(nb);
        scaling.target = model.target;
      }
    };
    const notebookFor = (path: string | undefined) =>
      tracker.find(w => w.context.path === path) ?? tracker.currentWidget;

    // Probe findings join the findings list (latest run of each function replaces its earlier ones).
    scaling.finished.connect((_, run) => {
      model.setProbeFindings(run.path, run.function, run.probe.findings ?? []);
    });
    // After each review, list the kernel's probe-able functions quietly: static memory findings in
    // code a harness reaches then offer "Measure scaling".
    let lastStatus = model.status;
    model.changed.connect(() => {
      if (model.status === 'done' && lastStatus === 'running') {
        void scaling.refresh(true);
      }
      lastStatus = model.status;
    });

    const panel = new TorchReviewPanel(model, scaling, {
      review: () => {
        follow();
        void model.run();
      },
      exportMarkdown: () => {
        void app.commands.execute(CommandIDs.exportMarkdown);
      },
      jump: (f: Finding) => {
        const nb = notebookFor(model.target?.path);
        if (nb) {
          void jumpToFinding(app, nb, f);
        }
      },
      jumpTo: (cell: number, line: number) => {
        const nb = notebookFor(model.target?.path);
        if (nb) {
          const at = { cell, line, column: 1, cell_id: null } as unknown as Finding;
          void jumpToFinding(app, nb, at);
        }
      },
      measure: (f, fn) => {
        model.tab = 'scaling';
        scaling.update({ selected: fn.name });
        void scaling.run(findingKey(f));
      }
    }, themeManager ? themeManager.themeChanged : null);
    app.shell.add(panel, 'right', { rank: 650 });
    if (restorer) {
      restorer.add(panel, 'torchreview-panel');
    }

    tracker.currentChanged.connect(follow);
    follow();

    // Review on save: re-review the notebook that was saved when it is the one the panel shows.
    const onSave = (context: DocumentRegistry.IContext<INotebookModel>, state: DocumentRegistry.SaveState) => {
      if (state === 'completed' && settings.autoReviewOnSave && model.target?.path === context.path) {
        void model.run();
      }
    };
    tracker.widgetAdded.connect((_, nb) => {
      nb.context.saveState.connect(onSave);
    });

    app.commands.addCommand(CommandIDs.review, {
      label: 'TorchReview: Review notebook',
      caption: "Review the current notebook's PyTorch code",
      icon: torchReviewIcon,
      isEnabled: () => tracker.currentWidget !== null,
      execute: async () => {
        follow();
        app.shell.activateById(panel.id);
        await model.run();
      }
    });
    app.commands.addCommand(CommandIDs.open, {
      label: 'TorchReview: Open panel',
      icon: torchReviewIcon,
      execute: () => {
        follow();
        app.shell.activateById(panel.id);
      }
    });
    app.commands.addCommand(CommandIDs.scaling, {
      label: 'TorchReview: Measure scaling',
      caption: "Open the Scaling tab: measure memory and time against T in the notebook's kernel",
      icon: torchReviewIcon,
      isEnabled: () => tracker.currentWidget !== null,
      execute: () => {
        follow();
        model.tab = 'scaling';
        app.shell.activateById(panel.id);
        void scaling.refresh();
      }
    });
    app.commands.addCommand(CommandIDs.toggleStandard, {
      label: () =>
        `TorchReview: Switch to ${model.standard === 'research' ? 'production' : 'research'} standard`,
      execute: async () => {
        await model.setStandard(model.standard === 'research' ? 'production' : 'research');
      }
    });
    app.commands.addCommand(CommandIDs.exportMarkdown, {
      label: 'TorchReview: Export review as Markdown',
      isEnabled: () => tracker.currentWidget !== null,
      execute: async () => {
        follow();
        const target = model.target;
        if (!target) {
          return;
        }
        try {
          const markdown = await model.markdown();
          const path = target.path.replace(/\.ipynb$/, '') + '.review.md';
          await app.serviceManager.contents.save(path, { type: 'file', format: 'text', content: markdown });
          await app.commands.execute('docmanager:open', { path });
        } catch (error) {
          await showErrorMessage('TorchReview: export failed', String(error instanceof Error ? error.message : error));
        }
      }
    });
    if (palette) {
      const category = 'TorchReview';
      for (const command of [
        CommandIDs.review,
        CommandIDs.open,
        CommandIDs.scaling,
        CommandIDs.toggleStandard,
        CommandIDs.exportMarkdown
      ]) {
        palette.addItem({ command, category });
      }
    }

    if (settingRegistry) {
      const apply = (s: ISettingRegistry.ISettings) => {
        const standard = s.get('standard').composite as string;
        settings.standard = (STANDARDS as readonly string[]).includes(standard)
          ? (standard as Standard)
          : 'research';
        settings.autoReviewOnSave = Boolean(s.get('autoReviewOnSave').composite);
        settings.ignoredRules = ((s.get('ignoredRules').composite as string[]) ?? []).filter(
          c => typeof c === 'string' && c.length > 0
        );
        if (!model.review) {
          model.defaultStandard = settings.standard;
        }
        model.ignoredRules = settings.ignoredRules;
        model.ruleOptions = {
          select: ((s.get('selectedRules').composite as string[]) ?? []).filter(
            c => typeof c === 'string' && c.length > 0
          ),
          severity: (s.get('severityOverrides').composite as { [code: string]: string }) ?? {}
        };
        const num = (key: string, fallback: number) => {
          const v = Number(s.get(key).composite);
          return Number.isFinite(v) && v > 0 ? v : fallback;
        };
        const sizes = ((s.get('probeSizes').composite as number[]) ?? []).filter(
          n => Number.isInteger(n) && n > 0
        );
        scaling.settings = {
          target: Math.round(num('targetSize', 400000)),
          sizes: sizes.length ? sizes : [...DEFAULT_SIZES],
          timeBudget: num('probeTimeBudget', 120),
          memoryBudget: num('memoryBudget', 0.5),
          isolated: Boolean(s.get('isolatedProbes').composite)
        };
      };
      settingRegistry
        .load(PLUGIN_ID)
        .then(s => {
          apply(s);
          s.changed.connect(apply);
        })
        .catch(reason => console.error('torchreview-lab: failed to load settings', reason));
    }
  }
};

export default plugin;
